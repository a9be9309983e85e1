"""The registry's ``current.json``: which version daemons serve, and the ones served before
it that ``rollback`` goes back to.

The pointer, not the version numbers, decides what is served, so a version can be saved
without being served and a bad promotion undone. It is replaced in one rename (temporary
file, fsync, rename, fsync the directory), so a reader sees the old pointer or the new one,
never half of one. ``serving_order`` is what a daemon falls back through at start-up when
the current version will not load.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamcast.errors import RegistryError

POINTER_FILE = "current.json"
#: Versions served before the current one that the pointer remembers for ``rollback``
#: (at most ``keep - 1``, so that retention can keep its promise).
HISTORY = 5
#: Every temporary file or directory in a registry starts with this; the registry sweeps
#: those a writer that died mid-write left behind.
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Pointer:
    """The contents of ``current.json``: the served version and the ones served before
    it, most recent first (what ``rollback`` goes back to)."""

    current: int
    previous: tuple[int, ...] = ()
    changed: str = ""  # when, ISO 8601 UTC
    action: str = ""  # save, promote or rollback
    by: str = ""  # user@host pid

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "previous": list(self.previous),
            "changed": self.changed,
            "action": self.action,
            "by": self.by,
        }


@dataclass(frozen=True)
class Promotion:
    """What a promotion changed: the version served before (None: no pointer yet) and the
    versions retention removed."""

    current: int
    previous: int | None
    removed: tuple[int, ...] = ()


def read_pointer(directory: Path) -> Pointer | None:
    """The pointer in ``directory`` (one small file read); None when there is none.

    Raises RegistryError naming the file when it is not one streamcast wrote.
    """
    path = directory / POINTER_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read the registry pointer {path}: {exc}") from exc
    try:
        data = json.loads(text)
        current = data["current"]
        previous = data.get("previous", [])
        if not isinstance(previous, list):
            raise TypeError("previous must be a list of versions")
        if not _is_version(current) or not all(_is_version(v) for v in previous):
            raise TypeError("versions must be positive integers")
        return Pointer(
            current=current,
            previous=tuple(previous),
            changed=str(data.get("changed", "")),
            action=str(data.get("action", "")),
            by=str(data.get("by", "")),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RegistryError(
            f"registry pointer {path} is not valid ({type(exc).__name__}: {exc}); "
            "`streamcast models promote N` writes a new one"
        ) from exc


def write_pointer(directory: Path, current: int, previous: Iterable[int], action: str) -> None:
    """Replace the pointer in one rename (temp file, fsync, rename, fsync the dir)."""
    pointer = Pointer(
        current=current,
        previous=tuple(previous),
        changed=datetime.now(UTC).isoformat(timespec="seconds"),
        action=action,
        by=f"{_user()}@{socket.gethostname()} pid {os.getpid()}",
    )
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + "current-", dir=directory)
    try:
        os.fchmod(fd, 0o644)  # daemons may run as another user (mkstemp makes it 0600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(pointer.as_dict(), indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / POINTER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync(directory)


def history_after(pointer: Pointer | None, version: int, depth: int) -> tuple[int, ...]:
    """The rollback history once ``version`` is promoted over ``pointer``: the versions
    served so far, most recent first, without ``version``, at most ``depth`` of them."""
    if pointer is None:
        return ()
    history = [pointer.current, *pointer.previous]
    return tuple(_unique(v for v in history if v != version))[:depth]


def serving_order(pointer: Pointer | None, versions: Iterable[int]) -> list[int]:
    """The versions a daemon tries at start-up, first choice first.

    With a pointer: the current version, then the versions served before it (known
    good), then the other versions below it, newest first, then those above it (saved
    but never promoted), newest first. Without one: newest first.
    """
    present = sorted(set(versions), reverse=True)
    if pointer is None:
        return present
    found = set(present)
    below = [v for v in present if v < pointer.current]
    above = [v for v in present if v > pointer.current]
    history = [v for v in pointer.previous if v in found]
    return list(_unique([pointer.current, *history, *below, *above]))


def fsync(path: Path) -> None:
    """Flush a file or directory to disk; shared by the pointer and the version writes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; durability is best effort
        pass
    finally:
        os.close(fd)


def _unique(items: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(items))


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd)
        return "?"
