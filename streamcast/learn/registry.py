"""Versioned models on disk: ``v000001/{model.keras, meta.json}``, written atomically,
and ``current.json``, the pointer to the version daemons serve.

A version directory appears in one ``os.rename`` of a finished temporary directory, so a
reader never sees half a model; two writers racing for the same number both succeed, the
loser simply takes the next number. Versions are immutable once they appear.

Which version is served is decided by the pointer, not by the version numbers: a new
version can be saved without being served (``save(promote=False)``) and promoted after a
check, and a bad promotion is undone with ``rollback``, which goes back to the version
served before (the pointer keeps a short history of them). The pointer is replaced in one
rename, so a reader sees the old or the new one. A registry without a pointer (made by
hand, or by an older streamcast) serves its newest usable version. After each promotion
all but the newest ``keep`` versions are removed, except the current one and its history.

A version copied in by hand (``cp -r``, ``rsync``) is not atomic: its directory appears
before its files. ``load`` names what is wrong (no meta.json yet, a truncated model.keras,
a checksum that does not match) and raises ``IncompleteVersionError`` while a file is still
missing; ``fingerprint`` (two ``stat`` calls) tells a poller when the files changed, so a
rejected version is tried again once its copy finished. ``promote`` refuses a version that
would not load, naming why.
"""

from __future__ import annotations

import errno
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import streamcast
from streamcast.config import ModelSpec
from streamcast.errors import ModelMismatchError, RegistryError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
POINTER_FILE = "current.json"
#: Versions served before the current one that the pointer remembers for ``rollback``
#: (at most ``keep - 1``, so that retention can keep its promise).
HISTORY = 5
DEFAULT_KEEP = 10
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600.0
_CHECKED_FIELDS = ("num_steps", "num_features", "horizon")
_KERAS_CONFIG = "config.json"  # every Keras 3 ``.keras`` archive holds one
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

#: (file name, size in bytes, mtime in ns) of each of a version's files that exists.
Fingerprint = tuple[tuple[str, int, int], ...]


class IncompleteVersionError(RegistryError):
    """A version directory without its meta.json or model.keras (yet): a copy in progress?

    Writers of this package never leave one (they rename a finished directory into
    place); a hand copy does until it finishes, so a poller may wait for it.
    """


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


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # keras.Model
    cfg: ModelSpec
    meta: dict[str, Any]
    version: int
    path: Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; durability is best effort
        pass
    finally:
        os.close(fd)


class ModelRegistry:
    """Numbered model versions under one directory (shared by trainers and daemons).

    ``keep``: how many of the newest versions a promotion keeps (the current version
    and its rollback history are always kept).
    """

    def __init__(self, path: str | os.PathLike[str], *, keep: int = DEFAULT_KEEP) -> None:
        if keep < 2:
            raise ValueError(f"keep must be at least 2, got {keep}")
        self.path = Path(path)
        self.keep = keep

    def version_path(self, version: int) -> Path:
        return self.path / f"v{version:06d}"

    def versions(self) -> list[int]:
        """Every version directory, ascending; one directory listing, no file reads.

        A version copied in by hand may still be incomplete; ``load`` says so.
        """
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _VERSION_RE.match(n)))

    def latest(self) -> int | None:
        found = self.versions()
        return found[-1] if found else None

    # -- the pointer ---------------------------------------------------------------------

    def pointer(self) -> Pointer | None:
        """The pointer (one small file read); None when the registry has none.

        Raises RegistryError naming the file when it is not one streamcast wrote.
        """
        path = self.path / POINTER_FILE
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

    def current(self) -> int | None:
        """The version the pointer names (served by daemons); None without a pointer."""
        pointer = self.pointer()
        return pointer.current if pointer is not None else None

    def promote(self, version: int, *, expect: ModelSpec | None = None) -> Promotion:
        """Point ``current`` at a version that loads, then apply retention.

        The version is checked first (complete, model_config valid, a Keras archive
        whose sha256 is the recorded one, and the shape ``expect`` asks for); a version
        that fails is refused with the RegistryError (or ModelMismatchError) naming why.
        The version served so far goes to the front of the rollback history.
        """
        self.verify(version, expect=expect)
        return self._promote(version, "promote")

    def rollback(self) -> int:
        """Point ``current`` back at the version served before it; returns that version.

        History entries that no longer verify (deleted, corrupted) are skipped and
        dropped, with a warning. Raises RegistryError when there is no pointer, or no
        usable version in its history.
        """
        pointer = self.pointer()
        if pointer is None:
            raise RegistryError(
                f"model registry {self.path} has no current version to roll back from "
                "(promote one first)"
            )
        skipped = []
        for i, version in enumerate(pointer.previous):
            try:
                self.verify(version)
            except RegistryError as exc:
                logger.warning("rollback skips model version %d: %s", version, exc)
                skipped.append(f"version {version}: {exc}")
                continue
            self._write_pointer(version, pointer.previous[i + 1 :], "rollback")
            logger.info("rolled back model version=%d from=%d", version, pointer.current)
            return version
        if not skipped:
            raise RegistryError(
                f"model version {pointer.current} is current and no version was served "
                "before it: nothing to roll back to"
            )
        raise RegistryError(
            f"cannot roll back from model version {pointer.current}: no version served "
            "before it is usable (" + "; ".join(skipped) + ")"
        )

    def prune(self) -> list[int]:
        """Remove all but the newest ``keep`` versions, never the current version nor its
        rollback history; returns the versions removed.

        A registry without a pointer is left alone (nothing says what is being served).
        Each version leaves in one rename before it is deleted, so a reader never sees
        half of one.
        """
        pointer = self.pointer()
        if pointer is None:
            return []
        protected = {pointer.current, *pointer.previous}
        doomed = [v for v in self.versions()[: -self.keep] if v not in protected]
        removed = [v for v in doomed if self._remove(v)]
        if removed:
            _fsync(self.path)
            logger.info("retention removed model versions=%s keep=%d", removed, self.keep)
        return removed

    def _promote(self, version: int, action: str) -> Promotion:
        pointer = self.pointer()
        if pointer is None:
            # No pointer yet: daemons have been serving the newest version.
            others = [v for v in self.versions() if v != version]
            pointer = Pointer(current=others[-1]) if others else None
        if pointer is not None and pointer.current == version:
            return Promotion(version, version)
        previous: tuple[int, ...] = ()
        if pointer is not None:
            history = [pointer.current, *pointer.previous]
            depth = min(HISTORY, self.keep - 1)
            previous = tuple(_unique(v for v in history if v != version))[:depth]
        self._write_pointer(version, previous, action)
        logger.info(
            "promoted model version=%d previous=%s",
            version,
            pointer.current if pointer is not None else None,
        )
        removed = self.prune()
        return Promotion(version, pointer.current if pointer is not None else None, tuple(removed))

    def _write_pointer(self, current: int, previous: Iterable[int], action: str) -> None:
        """Replace the pointer in one rename (temp file, fsync, rename, fsync the dir)."""
        pointer = Pointer(
            current=current,
            previous=tuple(previous),
            changed=datetime.now(UTC).isoformat(timespec="seconds"),
            action=action,
            by=f"{_user()}@{socket.gethostname()} pid {os.getpid()}",
        )
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + "current-", dir=self.path)
        try:
            os.fchmod(fd, 0o644)  # daemons may run as another user (mkstemp makes it 0600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(pointer.as_dict(), indent=2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path / POINTER_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync(self.path)

    def _remove(self, version: int) -> bool:
        """Rename a version out of sight, then delete it; False if it was gone already."""
        vdir = self.version_path(version)
        hidden = self.path / f"{_TMP_PREFIX}removed-{vdir.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(vdir, hidden)
        except FileNotFoundError:
            return False
        shutil.rmtree(hidden, ignore_errors=True)
        return True

    # -- versions ------------------------------------------------------------------------

    def save(
        self,
        model: Any,
        cfg: ModelSpec,
        *,
        metrics: Mapping[str, Any] | None = None,
        data_range: Mapping[str, Any] | None = None,
        promote: bool = True,
    ) -> int:
        """Write a new version and return its number.

        ``promote``: point ``current`` at it once it is complete (and apply retention);
        False leaves it unserved until ``promote(version)``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._sweep_stale()
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.path))
        try:
            model_file = tmp / MODEL_FILE
            model.save(str(model_file))
            _fsync(model_file)
            meta: dict[str, Any] = {
                "version": 0,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "streamcast_version": streamcast.__version__,
                "model_config": cfg.model_dump(mode="json"),
                "data_range": dict(data_range) if data_range is not None else None,
                "metrics": dict(metrics) if metrics is not None else None,
                "sha256": _sha256(model_file),
            }
            version = (self.latest() or 0) + 1
            while True:
                meta["version"] = version
                meta_file = tmp / META_FILE
                meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                _fsync(meta_file)
                _fsync(tmp)
                try:
                    os.rename(tmp, self.version_path(version))
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    logger.info("registry version taken, retrying version=%d", version)
                    version = max(version, self.latest() or 0) + 1
                    continue
                break
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync(self.path)
        logger.info("saved model version=%d path=%s", version, self.version_path(version))
        if promote:
            self._promote(version, "save")
        return version

    def fingerprint(self, version: int) -> Fingerprint:
        """Name, size and mtime of the version's meta.json and model.keras (those present).

        Two ``stat`` calls, no reads: a poller that rejected a version compares this to
        decide whether the files changed since, and so whether to try again.
        """
        vdir = self.version_path(version)
        out = []
        for name in (META_FILE, MODEL_FILE):
            try:
                st = os.stat(vdir / name)
            except OSError:
                continue
            out.append((name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def meta(self, version: int) -> dict[str, Any]:
        """A version's meta.json (cheap: no model load)."""
        vdir = self.version_path(version)
        path = vdir / META_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            if not vdir.is_dir():
                raise RegistryError(f"no model version {version} in {self.path}") from None
            raise IncompleteVersionError(
                f"model version {version} has no {META_FILE} (copy incomplete?): {vdir}"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"model version {version}: cannot read {path}: {exc}") from exc
        if not text.strip():
            raise IncompleteVersionError(
                f"model version {version}: {path} is empty (copy incomplete?)"
            )
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RegistryError(
                f"model version {version}: {path} is not valid JSON ({exc}); "
                "truncated, or not written by streamcast?"
            ) from exc
        if not isinstance(data, dict):
            raise RegistryError(f"model version {version}: {path} does not hold a JSON object")
        return data

    def verify(
        self, version: int, expect: ModelSpec | None = None
    ) -> tuple[dict[str, Any], ModelSpec]:
        """Every check ``load`` makes except deserialising: (meta, its model_config).

        Reads the whole model.keras once (its sha256), imports no backend.
        """
        vdir = self.version_path(version)
        meta = self.meta(version)
        try:
            cfg = ModelSpec(**meta["model_config"])
        except (KeyError, TypeError, ValidationError) as exc:
            raise RegistryError(
                f"model version {version}: {vdir / META_FILE}: bad model_config: {exc}"
            ) from exc
        if expect is not None:
            for name in _CHECKED_FIELDS:
                stored, wanted = getattr(cfg, name), getattr(expect, name)
                if stored != wanted:
                    raise ModelMismatchError(
                        f"model version {version} has {name}={stored} but the configuration "
                        f"expects {name}={wanted}"
                    )
        model_file = vdir / MODEL_FILE
        expected = meta.get("sha256")
        if not isinstance(expected, str) or not _SHA256_RE.match(expected):
            raise RegistryError(
                f"model version {version}: {vdir / META_FILE} records no valid sha256 "
                f"(got {expected!r}); an unverified model is never loaded"
            )
        _check_archive(model_file, version)
        try:
            digest = _sha256(model_file)
        except OSError as exc:
            raise RegistryError(
                f"model version {version}: cannot read {model_file}: {exc}"
            ) from exc
        if digest != expected:
            raise RegistryError(
                f"model version {version}: checksum mismatch for {model_file}: sha256 {digest}, "
                f"meta.json records {expected} (file changed or replaced after it was saved)"
            )
        return meta, cfg

    def load(self, version: int | None = None, expect: ModelSpec | None = None) -> LoadedModel:
        """Load a version (default: the current one, or the latest without a pointer),
        verifying its checksum and shape.

        The shape check runs before the model is deserialised, so a daemon configured for a
        different window or feature count gets a clear error instead of a broken forecast.
        Nothing is deserialised unless model.keras is a complete Keras archive whose sha256
        is the one meta.json records, and then only with Keras' ``safe_mode``.

        Raises ``IncompleteVersionError`` (a RegistryError) while meta.json or model.keras
        is missing, RegistryError naming the cause for any other defect, and
        ModelMismatchError when the shape differs from ``expect``.
        """
        if version is None:
            version = self.current() or self.latest()
            if version is None:
                raise RegistryError(f"model registry {self.path} holds no model versions")
        meta, cfg = self.verify(version, expect)
        vdir = self.version_path(version)
        model_file = vdir / MODEL_FILE
        try:
            model = _load_keras(model_file)
        except Exception as exc:
            raise RegistryError(
                f"model version {version}: cannot load {model_file}: {exc}"
            ) from exc
        logger.info("loaded model version=%d path=%s", version, vdir)
        return LoadedModel(model=model, cfg=cfg, meta=meta, version=version, path=vdir)

    def _sweep_stale(self) -> None:
        """Remove temporary files and directories left by writers that died mid-write."""
        now = time.time()
        for entry in os.scandir(self.path):
            if not entry.name.startswith(_TMP_PREFIX):
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime <= _STALE_TMP_S:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


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


def _unique(items: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(items))


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd)
        return "?"


def _check_archive(path: Path, version: int) -> None:
    """Refuse a model.keras that is missing, truncated or not a Keras archive, by its zip
    directory alone (cheap, and before anything is deserialised)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IncompleteVersionError(
            f"model version {version} has no {MODEL_FILE} (copy incomplete?): {path.parent}"
        ) from None
    except OSError as exc:
        raise RegistryError(f"model version {version}: cannot read {path}: {exc}") from exc
    if size == 0:
        raise RegistryError(f"model version {version}: {path} is empty (truncated copy?)")
    # A .keras file is a zip archive; its directory sits at the end, so a file cut short
    # (a copy still running, a full disk) has none.
    try:
        if not zipfile.is_zipfile(path):
            raise RegistryError(
                f"model version {version}: {path} ({size} bytes) is not a Keras archive: "
                "no zip directory at its end (truncated, or a copy still running?)"
            )
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise RegistryError(
            f"model version {version}: {path} is not a readable Keras archive ({exc}); truncated?"
        ) from exc
    if _KERAS_CONFIG not in names:
        raise RegistryError(
            f"model version {version}: {path} is a zip archive but not a Keras one "
            f"(no {_KERAS_CONFIG} inside)"
        )


def _load_keras(path: Path) -> Any:
    """Load with ``safe_mode=True``: a model file can never run arbitrary code.

    Importing ``streamcast.model`` registers the custom layers the archive names.
    """
    import streamcast.model  # noqa: F401
    from streamcast.model.runtime import keras

    return keras.saving.load_model(str(path), safe_mode=True)
