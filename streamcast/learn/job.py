"""Training in a separate process, so the inference loop keeps polling meanwhile.

TensorFlow is not fork-safe, so the child is *spawned*; it limits its own threads,
trains, writes a new version to the registry and exits. The parent only watches
the process and then reads the registry.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn.cpus import available_cpus
from streamcast.signals import die_with_parent

logger = logging.getLogger(__name__)


def _train_and_save(
    cfg_json: str,
    settings_json: str,
    registry_path: str,
    series: list[np.ndarray],
    timestamps: list[np.ndarray] | None,
    log_level: int,
    parent_pid: int,
) -> None:
    die_with_parent(parent_pid, signal.SIGKILL)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = TrainingSettings.model_validate_json(settings_json)
    from streamcast.learn import fit

    fit.limit_threads(settings.threads)
    from streamcast.learn.registry import ModelRegistry

    cfg = ModelSpec.model_validate_json(cfg_json)
    result = fit.train(cfg, series, settings, progress=False, timestamps=timestamps)
    version = ModelRegistry(registry_path).save(
        result.model,
        cfg,
        metrics=result.metrics.as_dict(),
        data_range=result.data_range.as_dict(),
    )
    mean = result.metrics.score("model")
    logger.info(
        "trained version=%d epochs=%d seconds=%.1f stopped_by=%s val_mae=%.4f",
        version,
        result.epochs,
        result.seconds,
        result.stopped_by,
        mean.mae,
    )


class TrainingJob:
    """One training run in a spawned process, with no more threads than CPUs it may use."""

    def __init__(
        self,
        cfg: ModelSpec,
        settings: TrainingSettings,
        registry_path: str | os.PathLike[str],
        series: list[np.ndarray],
        timestamps: list[np.ndarray] | None = None,
    ) -> None:
        cpus = available_cpus()
        if settings.threads > cpus:
            logger.info(
                "trainer threads capped to the CPUs available threads=%d asked=%d",
                cpus,
                settings.threads,
            )
            settings = settings.model_copy(update={"threads": cpus})
        self.settings = settings
        ctx = multiprocessing.get_context("spawn")
        args: tuple[Any, ...] = (
            cfg.model_dump_json(),
            settings.model_dump_json(),
            str(Path(registry_path)),
            series,
            timestamps,
            logging.getLogger().getEffectiveLevel(),
            os.getpid(),
        )
        self.process = ctx.Process(
            target=_train_and_save, args=args, name="streamcast-trainer", daemon=True
        )

    def start(self) -> TrainingJob:
        self.process.start()
        logger.info("training started pid=%s", self.process.pid)
        return self

    def done(self) -> bool:
        return not self.process.is_alive()

    @property
    def ok(self) -> bool:
        return self.process.exitcode == 0

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=5)
