"""One writer at a time for a registry shared by processes and hosts: a lease with a TTL.

The lease is a file, ``lease.json`` in the registry directory, created with
``O_CREAT|O_EXCL`` (atomic on local filesystems and NFSv3 or later) and holding its
holder and expiry time. The holder renews it well before the TTL passes; a holder that
dies stops renewing, and once the expiry passes another process takes the lease over.

Taking over must never let two contenders win. Renaming the stale file away is not
enough: a contender that read it earlier could rename away the *new* lease instead. So
the stale file is hard-linked to a name made of its identity (inode and mtime), which
only one contender can create; that one checks the name still points at the file it
judged stale, removes the lock file, and then races for the ``O_EXCL`` create like
everyone else. A contender whose link names some other file removes nothing.

Expiry compares wall clocks: hosts sharing a registry need synchronised clocks, and
``ttl_s`` should be far above their skew.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
# Temporary names start like the registry's own, so its sweep removes what a crash left.
_TMP_PREFIX = ".tmp-lease-"
_ATTEMPTS = 8  # create / take over rounds before acquire() gives up for now
_BREAK_SLOTS = 4  # takeovers of one stale file that may die half-way before we give up


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease and until when (epoch seconds)."""

    holder: str
    host: str
    pid: int
    acquired: float
    expires: float
    token: str

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the lease expires (negative once it has)."""
        return self.expires - (time.time() if now is None else now)


def _parse(data: bytes) -> LeaseInfo | None:
    """The lease a file holds, or None while it is empty or unreadable (being written)."""
    try:
        raw = json.loads(data)
        return LeaseInfo(
            holder=str(raw["holder"]),
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            acquired=float(raw["acquired"]),
            expires=float(raw["expires"]),
            token=str(raw["token"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


class RegistryLease:
    """An exclusive, expiring lease on the registry at ``path`` for ``holder``.

    ``acquire`` is non-blocking: True when this object holds the lease afterwards.
    ``renew`` pushes the expiry ``ttl_s`` ahead and says False once the lease was lost
    (expired, possibly taken over); call it every ``ttl_s / 3`` or so. ``clock`` returns
    wall-clock epoch seconds (tests replace it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        holder: str,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.path = Path(path)
        self.file = self.path / LEASE_FILE
        self.name = holder
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        # A holder stops trusting its lease this long before it expires, so that a
        # renewal or release never touches a file someone else may be taking over.
        self._margin = 0.1 * self.ttl_s

    @property
    def held(self) -> bool:
        """True while this object holds the lease (by its own clock, with a margin)."""
        return self._token is not None and self._clock() < self._expires - self._margin

    def acquire(self) -> bool:
        """Take the lease if it is free or expired; True when held afterwards."""
        if self._token is not None and self.renew():
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(_ATTEMPTS):
            if self._create():
                return True
            seen = self._read()
            if seen is None:
                continue  # released meanwhile: race for the create again
            info, st = seen
            if self._clock() < self._expiry(info, st):
                return False
            if not self._take_over(st):
                return False
        return False

    def renew(self) -> bool:
        """Push the expiry ``ttl_s`` ahead; False (and no longer held) if it was lost."""
        if self._token is None:
            return False
        now = self._clock()
        seen = self._read() if now < self._expires - self._margin else None
        if seen is None or seen[0] is None or seen[0].token != self._token:
            logger.warning("registry lease lost holder=%s path=%s", self.name, self.file)
            self._forget()
            return False
        info = self._info(self._token, now, acquired=seen[0].acquired)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.path)
        try:
            os.fchmod(fd, 0o644)  # as readable as the file it replaces
            with os.fdopen(fd, "wb") as fh:
                fh.write(json.dumps(asdict(info)).encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path)
        self._expires = info.expires
        return True

    def release(self) -> None:
        """Give the lease up (removing the file only while it is surely still ours)."""
        token, expires = self._token, self._expires
        self._forget()
        if token is None or self._clock() >= expires - self._margin:
            return
        seen = self._read()
        if seen is not None and seen[0] is not None and seen[0].token == token:
            self.file.unlink(missing_ok=True)
            logger.info("registry lease released holder=%s", self.name)

    def holder(self) -> LeaseInfo | None:
        """Who holds the lease now; None when nobody does (no lease, or it expired)."""
        seen = self._read()
        if seen is None:
            return None
        info, st = seen
        if self._clock() >= self._expiry(info, st):
            return None
        if info is None:  # just created, its contents not written yet
            return LeaseInfo("?", "?", 0, st.st_mtime, st.st_mtime + self.ttl_s, "")
        return info

    # -- the file ------------------------------------------------------------------------

    def _info(self, token: str, now: float, acquired: float | None = None) -> LeaseInfo:
        return LeaseInfo(
            holder=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired=now if acquired is None else acquired,
            expires=now + self.ttl_s,
            token=token,
        )

    def _create(self) -> bool:
        """Create the lease file if none exists; True when this object holds it now."""
        info = self._info(uuid.uuid4().hex, self._clock())
        try:
            fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(asdict(info)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.path)
        self._token, self._expires = info.token, info.expires
        logger.info("registry lease acquired holder=%s ttl_s=%g", self.name, self.ttl_s)
        return True

    def _read(self) -> tuple[LeaseInfo | None, os.stat_result] | None:
        """(the lease, the file's stat), or None when there is no lease file."""
        try:
            fd = os.open(self.file, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return _parse(b"".join(chunks)), st

    def _expiry(self, info: LeaseInfo | None, st: os.stat_result) -> float:
        # A file without readable contents is being written, or its writer died between
        # the create and the write: held for one ttl from its creation.
        return info.expires if info is not None else st.st_mtime + self.ttl_s

    def _take_over(self, stale: os.stat_result) -> bool:
        """Remove the expired lease file ``stale`` (as read); False if someone else is.

        True means "look again": the stale file is gone, or the lock file changed.
        """
        for slot in range(_BREAK_SLOTS):
            name = self.path / f"{_TMP_PREFIX}broken-{stale.st_ino}-{stale.st_mtime_ns}-{slot}"
            try:
                os.link(self.file, name)
            except FileNotFoundError:
                return True
            except FileExistsError:
                try:
                    lock = os.stat(self.file)
                except FileNotFoundError:
                    return True
                if not _same(lock, stale):
                    return True
                if self._clock() - lock.st_ctime > self.ttl_s:
                    continue  # its taker died between link and unlink: use the next slot
                return False  # another contender is taking it over right now
            try:
                if _same(os.stat(name), stale):
                    os.unlink(self.file)
                    logger.warning("registry lease taken over from an expired holder")
            finally:
                name.unlink(missing_ok=True)
            return True
        return False

    def _forget(self) -> None:
        self._token, self._expires = None, 0.0


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file, unchanged: a renewal replaces the file, so its identity changes."""
    return (a.st_dev, a.st_ino, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_mtime_ns)
