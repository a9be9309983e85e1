"""Learning from sensor history: data files and examples, evaluation and the promotion
gate, the fit loop, the training process and the CPUs it may use, the first model's
history and the replay buffer (cut at gaps where serving restarts a window), and the
model registry: its versions (``registry``), the checks a version's files pass before they
are trusted (``archive``) and the ``current`` pointer with its rollback history
(``pointer``).

Modules that the daemon imports while it runs (examples, gaps, history, replay, job,
registry, archive, pointer) stay free of TensorFlow; ``fit`` imports it through
``streamcast.model``.
"""
