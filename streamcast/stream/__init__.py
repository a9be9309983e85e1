"""The daemon and its data flow: poll → decode → window → batch → seed states →
infer → publish → commit.

Nothing here imports TensorFlow at module level; a model is loaded through
``streamcast.model`` only when the daemon serves one.
"""
