"""leakseg: gas-leak segmentation in infrared video (JVLGS), served by TorchServe.

The import root is light on purpose: ``import leakseg`` and ``leakseg.client`` need only
requests, pydantic, numpy and pillow. The model, export and handler subpackages import
torch and friends when they are imported themselves.
"""

__version__ = "0.1.0"
