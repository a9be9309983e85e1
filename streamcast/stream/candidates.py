"""Which registry version the daemon tries next, and which it leaves alone.

A version that failed to load is remembered by its files' fingerprint (names, sizes,
mtimes) and tried again only once they change: an operator's fix, not a retry loop.
A version still missing files (a ``cp -r`` or rsync in progress) is waited for while its
copy moves, and rejected once it has not moved for ``INCOMPLETE_GRACE_S``. Serving
(``stream.serving``) loads what this picks; this module never loads anything.
"""

from __future__ import annotations

import logging

from streamcast.errors import ModelMismatchError, RegistryError
from streamcast.learn.registry import Fingerprint, IncompleteVersionError, ModelRegistry, Pointer

logger = logging.getLogger(__name__)

# A version directory without its meta.json / model.keras (a cp -r or rsync in progress)
# is waited for this long without progress before it is rejected as an error.
INCOMPLETE_GRACE_S = 120.0


class Candidates:
    """The registry's versions as candidates for serving: rejected, incomplete, next."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.rejected_version = 0  # the newest version rejected so far (0: none)
        # version -> its files' fingerprint when rejected: tried again once they change
        self.rejected: dict[int, Fingerprint] = {}
        # version -> (fingerprint, since, why): incomplete, waited for while its files change
        self.incomplete: dict[int, tuple[Fingerprint, float, str]] = {}
        self._pointer_error = ""  # the last unreadable-pointer error logged (once each)

    def skipped_at_startup(
        self, version: int, fingerprint: Fingerprint, exc: RegistryError, now: float
    ) -> None:
        """A version start-up could not serve: waited for if incomplete, else rejected."""
        level = logging.ERROR
        if isinstance(exc, IncompleteVersionError):
            self.incomplete[version] = (fingerprint, now, str(exc))
            level = logging.WARNING  # a copy in progress, most likely
        else:
            self.rejected[version] = fingerprint
            self.rejected_version = max(self.rejected_version, version)
        logger.log(
            level,
            "model version %d skipped at start-up: %s",
            version,
            exc,
            extra={"ctx": {"model_version": version}},
        )

    def next(self, now: float, served: int, meanwhile: str) -> tuple[int, Fingerprint] | None:
        """The version to load now, if the pointer names another one that can be tried.

        Without a pointer: the newest version above the served one that can be tried now.
        Skipped: versions rejected whose files have not changed since, and versions still
        missing files within the grace period (without a pointer, in favour of the next
        older one). An unreadable pointer is logged once and keeps the served model.
        Waiting for the trainer's first version, every version is above the served one (0).
        """
        try:
            pointer = self.registry.pointer()
        except RegistryError as exc:
            if str(exc) != self._pointer_error:
                self._pointer_error = str(exc)
                logger.error("%s; %s", exc, meanwhile)
            return None
        self._pointer_error = ""
        versions = self.registry.versions()
        chosen: tuple[int, Fingerprint] | None = None
        for version in self._wanted(pointer, versions, served):
            fingerprint = self.registry.fingerprint(version)
            if self.rejected.get(version) == fingerprint:
                continue
            if version in self.rejected:
                logger.info("model version %d changed since it was rejected: trying again", version)
                del self.rejected[version]
            seen = self.incomplete.get(version)
            if seen is not None and seen[0] == fingerprint:  # its copy has not moved
                if now - seen[1] < INCOMPLETE_GRACE_S:
                    continue
                del self.incomplete[version]
                self.reject(version, fingerprint, seen[2], meanwhile)
                continue
            chosen = (version, fingerprint)
            break
        # Forget versions that are gone (retention), except the one the pointer names.
        keep = set(versions) | ({pointer.current} if pointer is not None else set())
        for table in (self.rejected, self.incomplete):
            for version in [v for v in table if v not in keep]:
                del table[version]
        return chosen

    @staticmethod
    def _wanted(pointer: Pointer | None, versions: list[int], served: int) -> list[int]:
        """The versions to try swapping to, first choice first."""
        if pointer is not None:
            return [pointer.current] if pointer.current != served else []
        return [v for v in reversed(versions) if v > served]

    def waiting_for(self, version: int, fingerprint: Fingerprint, now: float, why: str) -> None:
        """A background load found the version incomplete: wait for its files."""
        if version not in self.incomplete:
            logger.info(
                "model version %d is not complete yet, waiting up to %.0fs for its files: %s",
                version,
                INCOMPLETE_GRACE_S,
                why,
                extra={"ctx": {"model_version": version}},
            )
        self.incomplete[version] = (fingerprint, now, why)

    def stop_waiting(self, version: int) -> None:
        """The version's load ended, served or rejected: no longer waited for."""
        self.incomplete.pop(version, None)

    def reject(
        self, version: int, fingerprint: Fingerprint, why: Exception | str, meanwhile: str
    ) -> None:
        """Log a bad version once; it is tried again when its files change."""
        self.rejected[version] = fingerprint
        self.rejected_version = max(self.rejected_version, version)
        if isinstance(why, Exception) and not isinstance(why, RegistryError | ModelMismatchError):
            why = f"{type(why).__name__}: {why}"
        logger.error(
            "model version %d rejected, %s (tried again if its files change): %s",
            version,
            meanwhile,
            why,
            extra={"ctx": {"model_version": version}},
        )
