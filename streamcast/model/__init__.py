"""The forecaster: its layers and graph builders, the state API, the compiled predictor.

Importing this package imports Keras (and TensorFlow) through
``streamcast.model.runtime``, quietly; the stream, ops and sim packages never
import it at module level, so commands that need no model start fast.
"""

from streamcast.errors import StateShapeError
from streamcast.model.effects import extra_shapes
from streamcast.model.graph import (
    build_chain_trainer,
    build_forecaster,
    build_stateful_twin,
    build_stepper,
    seed_states,
)
from streamcast.model.layers import (
    CarrySlice,
    Denormalize,
    LagFeatures,
    Standardize,
    WindowNormalization,
)
from streamcast.model.states import (
    assign_states,
    flatten_states,
    lstm_layers,
    read_states,
    split_states,
    state_shapes,
)

__all__ = [
    "CarrySlice",
    "Denormalize",
    "LagFeatures",
    "Standardize",
    "StateShapeError",
    "WindowNormalization",
    "assign_states",
    "build_chain_trainer",
    "build_forecaster",
    "build_stateful_twin",
    "build_stepper",
    "extra_shapes",
    "flatten_states",
    "lstm_layers",
    "read_states",
    "seed_states",
    "split_states",
    "state_shapes",
]
