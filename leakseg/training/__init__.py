"""Training and evaluation: the dataset reader, samplers, loss, the loop, metrics (synthetic data:
:mod:`leakseg.synth`).

The model and its checkpoints live in :mod:`leakseg.model`; inference (also during validation)
goes through :class:`leakseg.inference.Predictor`.
"""
