"""Learning from sensor history: data files and examples, evaluation, the fit loop,
the training process, the first model's history, and the model registry.

Modules that the daemon imports while it runs (examples, history, job, registry)
stay free of TensorFlow; ``fit`` imports it through ``streamcast.model``.
"""
