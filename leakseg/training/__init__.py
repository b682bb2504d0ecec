"""Training and evaluation: synthetic data, the dataset reader, samplers, loss, the loop, metrics.

The model and its checkpoints live in :mod:`leakseg.model`; inference (also during validation)
goes through :class:`leakseg.inference.Predictor`.
"""
