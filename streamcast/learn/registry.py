"""Versioned models on disk: ``v000001/{model.keras, meta.json}``, written atomically,
and retention; which version daemons serve is ``current.json`` (``pointer``).

A version directory appears in one ``os.rename`` of a finished temporary directory, so a
reader never sees half a model; two writers racing for the same number both succeed, the
loser simply takes the next number. Versions are immutable once they appear.

A new version can be saved without being served (``save(promote=False)``) and promoted
after a check; ``rollback`` goes back to the version served before. A registry without a
pointer (made by hand, or by an older streamcast) serves its newest usable version. After
each promotion all but the newest ``keep`` versions are removed, except the current one
and its history.

A version copied in by hand (``cp -r``, ``rsync``) is not atomic: its directory appears
before its files. ``load`` names what is wrong (``archive`` checks the model file) and
raises ``IncompleteVersionError`` while a file is still missing; ``fingerprint`` (two
``stat`` calls) tells a poller when the files changed, so a rejected version is tried
again once its copy finished. ``promote`` refuses a version that would not load.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import streamcast
from streamcast.config import ModelSpec
from streamcast.errors import ModelMismatchError, RegistryError
from streamcast.learn.archive import (
    META_FILE,
    MODEL_FILE,
    IncompleteVersionError,
    read_meta,
    sha256,
    verify_model_file,
)
from streamcast.learn.pointer import (
    HISTORY,
    POINTER_FILE,
    TMP_PREFIX,
    Pointer,
    Promotion,
    fsync,
    history_after,
    read_pointer,
    serving_order,
    write_pointer,
)

__all__ = [
    "DEFAULT_KEEP",
    "HISTORY",
    "META_FILE",
    "MODEL_FILE",
    "POINTER_FILE",
    "Fingerprint",
    "IncompleteVersionError",
    "LoadedModel",
    "ModelRegistry",
    "Pointer",
    "Promotion",
    "serving_order",
]

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 10
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_STALE_TMP_S = 3600.0
_CHECKED_FIELDS = ("num_steps", "num_features", "horizon")

#: (file name, size in bytes, mtime in ns) of each of a version's files that exists.
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # keras.Model
    cfg: ModelSpec
    meta: dict[str, Any]
    version: int
    path: Path


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
        return read_pointer(self.path)

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
            write_pointer(self.path, version, pointer.previous[i + 1 :], "rollback")
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
            fsync(self.path)
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
        previous = history_after(pointer, version, min(HISTORY, self.keep - 1))
        write_pointer(self.path, version, previous, action)
        logger.info(
            "promoted model version=%d previous=%s",
            version,
            pointer.current if pointer is not None else None,
        )
        removed = self.prune()
        return Promotion(version, pointer.current if pointer is not None else None, tuple(removed))

    def _remove(self, version: int) -> bool:
        """Rename a version out of sight, then delete it; False if it was gone already."""
        vdir = self.version_path(version)
        hidden = self.path / f"{TMP_PREFIX}removed-{vdir.name}-{uuid.uuid4().hex[:8]}"
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
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.path))
        tmp.chmod(0o755)  # as readable as the pointer: daemons may run as another user
        try:
            model_file = tmp / MODEL_FILE
            model.save(str(model_file))
            fsync(model_file)
            meta: dict[str, Any] = {
                "version": 0,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "streamcast_version": streamcast.__version__,
                "model_config": cfg.model_dump(mode="json"),
                "data_range": dict(data_range) if data_range is not None else None,
                "metrics": dict(metrics) if metrics is not None else None,
                "sha256": sha256(model_file),
            }
            version = (self.latest() or 0) + 1
            while True:
                meta["version"] = version
                meta_file = tmp / META_FILE
                meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                fsync(meta_file)
                fsync(tmp)
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
        fsync(self.path)
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
        return read_meta(self.version_path(version), version)

    def verify(
        self, version: int, expect: ModelSpec | None = None
    ) -> tuple[dict[str, Any], ModelSpec]:
        """Every check ``load`` makes except deserialising: (meta, its model_config).

        Reads the whole model.keras once (its sha256), imports no backend.
        """
        vdir = self.version_path(version)
        meta = self.meta(version)
        try:
            # Versions saved before the calendar was a setting have none; it is on by
            # default only for models built from now on.
            cfg = ModelSpec(**{"calendar": False, **meta["model_config"]})
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
        verify_model_file(vdir, version, meta.get("sha256"))
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
            if not entry.name.startswith(TMP_PREFIX):
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


def _load_keras(path: Path) -> Any:
    """Load with ``safe_mode=True``: a model file can never run arbitrary code.

    Importing ``streamcast.model`` registers the custom layers the archive names.
    """
    import streamcast.model  # noqa: F401
    from streamcast.model.runtime import keras

    return keras.saving.load_model(str(path), safe_mode=True)
