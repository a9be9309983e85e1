"""Registry versions without a real model: a tiny Keras-shaped archive and its meta.json.

Everything the registry checks before deserialising (meta.json, model_config, a zip with
config.json, the sha256) holds, so pointer, promotion and retention tests need no backend.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from streamcast.config import ModelSpec
from streamcast.learn.archive import META_FILE, MODEL_FILE
from streamcast.learn.registry import ModelRegistry

CFG = ModelSpec(num_steps=8, num_features=2, units=(8,), horizon=4, dropout=0.0)


class FakeModel:
    """Saves a zip that passes the registry's archive check (``model.save`` is all it needs)."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag

    def save(self, path: str) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", json.dumps({"tag": self.tag}))


def add_version(path: Path, version: int, tag: str = "") -> Path:
    """Write version ``version`` straight into the directory, as a hand copy would."""
    vdir = ModelRegistry(path).version_path(version)
    vdir.mkdir(parents=True)
    FakeModel(tag or f"v{version}").save(str(vdir / MODEL_FILE))
    meta = {
        "version": version,
        "created": "2024-05-01T12:00:00+00:00",
        "model_config": CFG.model_dump(mode="json"),
        "metrics": None,
        "data_range": None,
        "sha256": hashlib.sha256((vdir / MODEL_FILE).read_bytes()).hexdigest(),
    }
    (vdir / META_FILE).write_text(json.dumps(meta))
    return vdir


def corrupt(path: Path, version: int) -> None:
    """Make a version fail its checksum (the model file changed after it was saved)."""
    with (ModelRegistry(path).version_path(version) / MODEL_FILE).open("ab") as fh:
        fh.write(b"\0")
