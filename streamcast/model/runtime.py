"""The one place Keras, and through it TensorFlow, is imported: quietly, once.

TensorFlow's C++ start-up writes straight to file descriptor 2 before its own
logging is initialised (the CPU-feature and oneDNN notes, "Could not find cuda
drivers", "failed call to cuInit"), so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide it.
Here the process's stderr descriptor is pointed at a temporary file while
Keras is imported and the devices are discovered; what was caught goes to
streamcast's own log at debug level (at error level if the import fails), and
one line of streamcast's says which device it uses.

Every module of streamcast that needs Keras takes it from here
(``from streamcast.model.runtime import keras``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

logger = logging.getLogger(__name__)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def native_stderr_captured(into: list[str]) -> Iterator[None]:
    """Send everything written to descriptor 2 (by C++ or Python) into ``into``."""
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            into.extend(sink.read().decode("utf-8", "replace").splitlines())


def _discover() -> tuple[str, str]:
    """(backend with its version, the device inference runs on)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"TensorFlow {tf.__version__}", "GPU:0" if gpus else "CPU:0"
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"JAX {jax.__version__}", f"{device.platform.upper()}:{device.id}"
    if backend == "torch":
        import torch

        return f"PyTorch {torch.__version__}", "GPU:0" if torch.cuda.is_available() else "CPU:0"
    return backend, "CPU:0"


_caught: list[str] = []
try:
    with native_stderr_captured(_caught):
        import keras

        BACKEND, DEVICE = _discover()
except BaseException:
    for _line in _caught:
        logger.error("%s", _line)
    raise
for _line in _caught:
    if _line.strip():
        logger.debug("backend start-up: %s", _line)
logger.info("%s on %s (Keras %s)", BACKEND, DEVICE, keras.__version__)

__all__ = ["BACKEND", "DEVICE", "keras", "native_stderr_captured"]
