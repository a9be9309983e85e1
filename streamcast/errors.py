"""One error root; subclasses carry the context an operator needs to act."""

from __future__ import annotations

from collections.abc import Sequence


class StreamcastError(Exception):
    """Root of every error streamcast raises on purpose."""


class ConfigError(StreamcastError):
    """The configuration is invalid; the message names the field."""


class StateShapeError(StreamcastError, ValueError):
    """An explicit LSTM state does not fit the layer it is meant for.

    Raised instead of letting Keras broadcast, silently detach or fail deep
    inside a compiled function with a message that names neither layer nor state.
    """

    def __init__(
        self,
        layer: str,
        state: str,
        expected: Sequence[int | None] | None,
        received: Sequence[int | None] | None,
        detail: str = "",
    ) -> None:
        self.layer = layer
        self.state = state
        self.expected = tuple(expected) if expected is not None else None
        self.received = tuple(received) if received is not None else None
        msg = (
            f"layer {layer!r}, state {state!r}: expected shape {self.expected}, "
            f"received {self.received}"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class ModelMismatchError(StreamcastError):
    """A stored model does not fit the caller's configuration (steps, features)."""


class RegistryError(StreamcastError):
    """The model registry is empty, corrupt or a checksum does not match."""


class DeliveryError(StreamcastError):
    """The broker did not acknowledge a forecast or dead letter; offsets stay uncommitted."""


class StartupError(StreamcastError):
    """Start-up cannot complete (broker unreachable, model missing); exit code 3."""

    @classmethod
    def broker_unreachable(cls, servers: str, timeout_s: float, cause: Exception) -> StartupError:
        return cls(f"broker unreachable at {servers} within {timeout_s:g}s: {cause}")
