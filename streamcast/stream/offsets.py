"""Offset bookkeeping: what has been processed, what may be committed, and when.

At-least-once rests on one rule: an input offset is committed only after the
broker acknowledged every forecast and dead letter derived from the records
below it. Readings still waiting in the batcher hold their partition's commit
back to their own offset, so a crash re-reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol


class _Positioned(Protocol):
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


class Offsets:
    """Per partition, the next offset processed live; and whether a commit is due."""

    def __init__(self) -> None:
        self.processed: dict[int, int] = {}
        self.dirty = False

    def processed_up_to(self, records: Iterable[_Positioned]) -> None:
        """Records handled (forecast queued, dead-lettered or absorbed), in offset order."""
        for rec in records:  # in offset order per partition: the last one wins
            self.processed[rec.partition] = rec.offset + 1
        self.dirty = True

    def to_commit(self, pending: Mapping[int, int]) -> dict[int, int]:
        """``partition → offset`` to commit, never past a reading still ``pending``."""
        offsets = dict(self.processed)
        for p, first_pending in pending.items():
            offsets[p] = min(offsets.get(p, first_pending), first_pending)
        return offsets

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions that moved to another member: their offsets are its business now."""
        for p in partitions:
            self.processed.pop(p, None)

    @property
    def partitions(self) -> list[int]:
        return sorted(self.processed)
