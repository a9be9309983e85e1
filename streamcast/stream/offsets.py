"""Offset bookkeeping: what has been processed, what may be committed, and when.

At-least-once rests on one rule: an input offset is committed only after the
broker acknowledged every forecast and dead letter derived from the records
below it. Readings still waiting in the batcher hold their partition's commit
back to their own offset, so a crash re-reads them.

Exactly-once (``kafka.exactly_once``) commits the same offsets, chosen by the same
rule, inside the transaction that carries the forecasts and dead letters. The sink
also watches ``revocations``: a transaction still open when partitions are revoked
holds output whose input offsets now belong to another member. (The loop commits
each transaction before it polls again, and rebalances happen only inside a poll,
so that is a safety net, not a path taken in normal operation.)
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
        #: How many times partitions were taken away (a rebalance); only ever grows.
        self.revocations = 0
        #: Partitions still held, with processed work, right after the last revocation
        #: (an incremental rebalance keeps the partitions that do not move).
        self.retained: frozenset[int] = frozenset()

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
        gone = set(partitions)
        for p in gone:
            self.processed.pop(p, None)
        if gone:
            self.revocations += 1
            self.retained = frozenset(self.processed)

    @property
    def partitions(self) -> list[int]:
        return sorted(self.processed)
