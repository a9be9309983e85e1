"""Running ``streamcast train`` in-process: a small model config and a hermetic command."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from streamcast.cli import main

TrainCommand = Callable[..., int]
WriteConfig = Callable[..., Path]


@pytest.fixture
def train_command(monkeypatch: pytest.MonkeyPatch) -> Iterator[TrainCommand]:
    """``main(["train", *args])`` with no STREAMCAST_ variable from the caller's environment.

    The command sets up logging (a handler on the root logger writing to the captured
    stderr); the root logger and the loggers it quietens are put back afterwards.
    """
    for name in list(os.environ):
        if name.startswith("STREAMCAST_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    others = {
        name: logging.getLogger(name).level
        for name in ("kafka", "tensorflow", "absl", "h5py", "kafka.net.selector")
    }
    yield lambda *args: main(["train", *(str(a) for a in args)])
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in others.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a YAML config for a small model; returns its path."""

    def write(
        *,
        num_steps: int,
        num_features: int,
        units: list[int],
        horizon: int,
        max_epochs: int,
    ) -> Path:
        path = tmp_path / "streamcast.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "window": {"num_steps": num_steps},
                    "model": {"num_features": num_features, "units": units, "horizon": horizon},
                    "training": {"max_epochs": max_epochs},
                }
            )
        )
        return path

    return write
