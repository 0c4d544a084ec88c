"""The training-time model of structural pruning: a frozen decoder (any of `families.FAMILIES`) whose blocks'
activations are multiplied by selection masks through forward hooks, so that gradients reach the masks but
never the weights.

Per block: the attention input mask scales the input norm's output (the norm itself sees the full residual
stream), the attention output mask scales attention's output, likewise the MLP input mask after the pre-MLP
norm, the intermediate mask the input of down_proj (OPT's fc2) and the output mask the MLP's output (fc2's); the
head mask (one entry per key/value head) the input of o_proj, each entry over the query heads that share that key
and value, as if their q/k/v rows and o_proj columns were gone. Where a family normalises what attention and the
MLP write (Gemma), the mask acts before that norm, whose statistic is then taken over the full width with zeros in
the dropped channels. This is the function the compressed model computes with index-select and index-add (and
fewer heads). The weights are never changed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dsa_core.structural.families import block_parts


class MaskedBlocks:
    """Hooks on every block, active inside `with`; set `masks` (per block, the six masks in STRUCTURES
    order) before each forward pass. Masks may carry gradients; they are cast to the activations' dtype."""

    def __init__(self, blocks: nn.ModuleList):
        self.blocks = blocks
        self.masks: Sequence[Sequence[torch.Tensor]] | None = None
        self._handles: list = []

    def _scale_output(self, block: int, structure: int):
        def hook(module, args, output):
            m = self.masks[block][structure]
            if isinstance(output, tuple):  # attention returns (output, weights)
                return (output[0] * m.to(output[0].dtype), *output[1:])
            return output * m.to(output.dtype)
        return hook

    def _scale_input(self, block: int, structure: int):
        def hook(module, args):
            return (args[0] * self.masks[block][structure].to(args[0].dtype), *args[1:])
        return hook

    def _scale_heads(self, block: int, structure: int):
        def hook(module, args):
            m = self.masks[block][structure]
            per_head = args[0].shape[-1] // m.numel()  # the query channels of one key/value head, contiguous
            return (args[0] * m.repeat_interleave(per_head).to(args[0].dtype), *args[1:])
        return hook

    def __enter__(self) -> MaskedBlocks:
        for i, block in enumerate(self.blocks):
            parts = block_parts(block)
            self._handles += [
                parts.attn_norm.register_forward_hook(self._scale_output(i, 0)),
                parts.attn.register_forward_hook(self._scale_output(i, 1)),
                parts.mlp_norm.register_forward_hook(self._scale_output(i, 2)),
                parts.down.register_forward_pre_hook(self._scale_input(i, 3)),
                parts.mlp.register_forward_hook(self._scale_output(i, 4)),
                parts.o_proj.register_forward_pre_hook(self._scale_heads(i, 5)),
            ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
