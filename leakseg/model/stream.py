"""The network in two halves, for streams: what each frame needs once, and what each triplet needs.

A camera stream sends every frame once. The clip graph (``TripletNetwork.forward``) encodes every frame
of the clip it is given, so windows that overlap encode their shared frames again. Split at the
features, a stream keeps each frame's features (strides 8, 16, 32) and runs only new frames through
:meth:`StreamNetwork.encode`; :meth:`StreamNetwork.decode` then decodes a frame as soon as its two
neighbours are encoded. Both halves are the network's own modules: their logits are the clip graph's.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from leakseg.model.network import TripletNetwork

#: The features the encoder hands the head, one tensor per stride (8, 16, 32), each (N, C, h, w).
FEATURE_NAMES = ("features8", "features16", "features32")


class StreamNetwork(nn.Module):
    """The two halves of a :class:`TripletNetwork` as two methods over the same weights."""

    #: Each half's graph inputs and outputs (the exported graphs' names).
    HEAD_INPUTS = (*FEATURE_NAMES, "targets", "neighbours")

    def __init__(self, network: TripletNetwork, input_size: Optional[int] = None):
        super().__init__()
        self.network = network
        self.size = int(input_size or network.config.input_size)  # the logits' size: the frames' (S x S)

    @property
    def encoder_inputs(self) -> Tuple[str, ...]:
        return tuple(n for n in self.network.input_names if n != "neighbours")

    def signatures(self) -> Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]:
        """{method: (input names, output names)}."""
        return {"encode": (self.encoder_inputs, FEATURE_NAMES), "decode": (self.HEAD_INPUTS, ("logits",))}

    def encode(self, frames: torch.Tensor, *text: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Frames (N, 3, S, S) (and each frame's text matrix (N, D, P) for a family that takes prompts) ->
        their features at strides 8, 16, 32."""
        return tuple(self.network.encode(frames, *text))

    def decode(self, features8: torch.Tensor, features16: torch.Tensor, features32: torch.Tensor,
               targets: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Features of a batch of frames, the rows to decode (M,) and each one's two neighbour rows (M, 2) ->
        the targets' logits (M, 1, S, S)."""
        feats = [features8, features16, features32]
        return self.network.decode_targets(feats, targets, neighbours, (self.size, self.size))[0]
