"""Small shapes and seasonal data shared by the model tests (fast on two CPU cores)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest

from streamcast.config import ModelSpec, Seeding

NUM_STEPS = 12
NUM_FEATURES = 2
HORIZON = 4

UNIT_STACKS = [(8, 8), (8, 16, 32)]
MODES: list[Seeding] = ["truth", "carry", "zeros"]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    keras.utils.set_random_seed(1234)


def make_cfg(units: tuple[int, ...] = (8, 8), seeding: Seeding = "truth") -> ModelSpec:
    return ModelSpec(
        num_steps=NUM_STEPS,
        num_features=NUM_FEATURES,
        units=units,
        dropout=0.2,
        horizon=HORIZON,
        seeding=seeding,
        calendar=False,  # the plain model; a test of the calendar turns it on
    )


def seasonal(n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(n, length, features) daily-like cycles at different levels, with noise."""
    t = np.arange(length)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, NUM_FEATURES))
    level = rng.uniform(-2, 2, (n, 1, NUM_FEATURES))
    amp = rng.uniform(0.5, 1.5, (n, 1, NUM_FEATURES))
    noise = 0.1 * rng.standard_normal((n, length, NUM_FEATURES))
    return (level + amp * np.sin(2 * np.pi * t / 8 + phase) + noise).astype(np.float32)


def split(series: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(window, truth): truth is the reading just before the window starting at start + 1."""
    return series[:, start + 1 : start + 1 + NUM_STEPS], series[:, start]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def batch(rng: np.random.Generator) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        return split(seasonal(n, NUM_STEPS + 1, rng))

    return make
