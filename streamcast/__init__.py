"""streamcast: a streaming time-series forecaster daemon.

Kafka readings in, truth-seeded stacked-LSTM forecasts out.
"""

__version__ = "0.1.0"
