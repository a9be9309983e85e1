"""Versioned models on disk: ``v000001/{model.keras, meta.json}``, written atomically.

A version directory appears in one ``os.rename`` of a finished temporary directory, so a
reader never sees half a model; two writers racing for the same number both succeed, the
loser simply takes the next number. Versions are immutable once they appear. ``latest()`` is
a single directory listing because the daemon polls it to hot-swap models.

A version copied in by hand (``cp -r``, ``rsync``) is not atomic: its directory appears
before its files. ``load`` names what is wrong (no meta.json yet, a truncated model.keras,
a checksum that does not match) and raises ``IncompleteVersionError`` while a file is still
missing; ``fingerprint`` (two ``stat`` calls) tells a poller when the files changed, so a
rejected version is tried again once its copy finished.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
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
    """Numbered model versions under one directory (shared by trainers and daemons)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

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

    def save(
        self,
        model: Any,
        cfg: ModelSpec,
        *,
        metrics: Mapping[str, Any] | None = None,
        data_range: Mapping[str, Any] | None = None,
    ) -> int:
        """Write a new version and return its number."""
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

    def load(self, version: int | None = None, expect: ModelSpec | None = None) -> LoadedModel:
        """Load a version (default: the latest), verifying its checksum and shape.

        The shape check runs before the model is deserialised, so a daemon configured for a
        different window or feature count gets a clear error instead of a broken forecast.
        Nothing is deserialised unless model.keras is a complete Keras archive whose sha256
        is the one meta.json records, and then only with Keras' ``safe_mode``.

        Raises ``IncompleteVersionError`` (a RegistryError) while meta.json or model.keras
        is missing, RegistryError naming the cause for any other defect, and
        ModelMismatchError when the shape differs from ``expect``.
        """
        if version is None:
            version = self.latest()
            if version is None:
                raise RegistryError(f"model registry {self.path} holds no model versions")
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
        try:
            model = _load_keras(model_file)
        except Exception as exc:
            raise RegistryError(
                f"model version {version}: cannot load {model_file}: {exc}"
            ) from exc
        logger.info("loaded model version=%d path=%s", version, vdir)
        return LoadedModel(model=model, cfg=cfg, meta=meta, version=version, path=vdir)

    def _sweep_stale(self) -> None:
        """Remove temporary directories left by writers that died mid-save."""
        now = time.time()
        for entry in os.scandir(self.path):
            if entry.name.startswith(_TMP_PREFIX) and entry.is_dir():
                try:
                    if now - entry.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(entry.path, ignore_errors=True)
                except OSError:
                    continue


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
