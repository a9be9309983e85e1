"""A version's files before they are trusted: its meta.json a JSON object, its
model.keras a complete Keras archive whose sha256 is the one meta.json recorded.

These checks read meta.json, the zip directory and the model's bytes, never deserialise
anything, so the registry runs them before a model is loaded and before a version is
promoted. A file still being copied in by hand is told apart (``IncompleteVersionError``)
from one that is wrong, so a poller knows to try again once the copy finished.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from streamcast.errors import RegistryError

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
KERAS_CONFIG = "config.json"  # every Keras 3 ``.keras`` archive holds one
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class IncompleteVersionError(RegistryError):
    """A version directory without its meta.json or model.keras (yet): a copy in progress?

    Writers of this package never leave one (they rename a finished directory into
    place); a hand copy does until it finishes, so a poller may wait for it.
    """


def read_meta(vdir: Path, version: int) -> dict[str, Any]:
    """The meta.json of the version in ``vdir`` (cheap: no model load)."""
    path = vdir / META_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not vdir.is_dir():
            raise RegistryError(f"no model version {version} in {vdir.parent}") from None
        raise IncompleteVersionError(
            f"model version {version} has no {META_FILE} (copy incomplete?): {vdir}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"model version {version}: cannot read {path}: {exc}") from exc
    if not text.strip():
        raise IncompleteVersionError(f"model version {version}: {path} is empty (copy incomplete?)")
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


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks so a large model is never held whole."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_model_file(vdir: Path, version: int, expected: object) -> None:
    """Refuse the version's model.keras unless it is a Keras archive whose sha256 is
    ``expected`` (what its meta.json records); reads the whole file once."""
    if not isinstance(expected, str) or not _SHA256_RE.match(expected):
        raise RegistryError(
            f"model version {version}: {vdir / META_FILE} records no valid sha256 "
            f"(got {expected!r}); an unverified model is never loaded"
        )
    path = vdir / MODEL_FILE
    check_archive(path, version)
    try:
        digest = sha256(path)
    except OSError as exc:
        raise RegistryError(f"model version {version}: cannot read {path}: {exc}") from exc
    if digest != expected:
        raise RegistryError(
            f"model version {version}: checksum mismatch for {path}: sha256 {digest}, "
            f"meta.json records {expected} (file changed or replaced after it was saved)"
        )


def check_archive(path: Path, version: int) -> None:
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
    if KERAS_CONFIG not in names:
        raise RegistryError(
            f"model version {version}: {path} is a zip archive but not a Keras one "
            f"(no {KERAS_CONFIG} inside)"
        )
