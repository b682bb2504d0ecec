"""Inference: the one path from frames to a ClipResult.

``Predictor`` (predictor.py) is the entry point: ``Predictor.from_archive`` for an exported .mar
(the TorchServe handler, `leakseg predict`, `leakseg evaluate`) and ``Predictor.from_model`` for
an eager network (validation during training). Around it: preprocessing, the graph runtimes,
post-processing and the archive manifest.
"""

from leakseg.inference.predictor import PreparedClip, Predictor
from leakseg.inference.stream import StreamPredictor

__all__ = ["PreparedClip", "Predictor", "StreamPredictor"]
