"""What several benches do alike: a model to serve, and a daemon process to stop."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def train_registry(path: Path | str, units: tuple[int, ...]) -> None:
    """A registry with one version of ``ModelSpec(units=units)``, trained for a moment on
    the simulator: a throughput bench needs a model's shape and cost, not its skill."""
    from streamcast.config import ModelSpec, TrainingSettings
    from streamcast.learn.fit import train
    from streamcast.learn.registry import ModelRegistry
    from streamcast.sim.fleet import fleet_series

    spec = ModelSpec(units=units)
    result = train(
        spec,
        fleet_series(4, 96 * 7, seed=1),
        TrainingSettings(max_seconds=5, max_epochs=1),
        progress=False,
    )
    ModelRegistry(path).save(result.model, spec, metrics={}, data_range={})


def stop_process(proc: subprocess.Popen[bytes], wait_s: float = 30.0) -> int:
    """SIGTERM (a clean stop: flush, commit), then SIGKILL if it overruns ``wait_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
