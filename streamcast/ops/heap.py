"""The process's heap: keep Python's cyclic collector off what lives as long as the process."""

from __future__ import annotations

import gc
import time


def settle_heap() -> float:
    """Collect the garbage once, then exempt what is left from the cyclic collector.

    TensorFlow, Keras and a compiled model leave some 300,000 objects that live as long
    as the process. Each full collection walks them all (about 0.15 s here), and the
    allocation the loop does (a record future per forecast until its flush) sets one
    off every so often: a pause in the middle of the stream, seen as the daemon's p99
    latency. Frozen, they are not walked; new objects are collected as usual. The
    unfreeze first lets a swapped-out version's cycles be collected; this runs once per
    version put into service, on the loop's thread, and returns the seconds it took.
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started
