"""What structural pruning selects and how the selection is generated.

Each decoder block has DISP-LLM's five selection structures: attention input and output (hidden channels), MLP
input (hidden), MLP intermediate (shared by the gate/up outputs and the down input) and MLP output (hidden); and a
sixth, attention heads, counted in key/value heads (each with the query heads that share it). DISP-LLM keeps every
head, so the KV cache keeps its size; selecting heads too (`StructuralConfig.prune_heads`) shrinks it. `BlockShape`
counts the linear-layer parameters a choice of widths keeps; `Selection` is a final choice of channels and heads;
`HyperNetwork` generates binary masks for all structures. No model code here: nothing runs or changes a language
model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsa_core.errors import ConfigError

STRUCTURES = ("attn_in", "attn_out", "mlp_in", "mlp_mid", "mlp_out", "attn_heads")
CHANNELS = 5  # the first five structures select channels; the last, heads
LABELS = {
    "attn_in": "attention input",
    "attn_out": "attention output",
    "mlp_in": "MLP input",
    "mlp_mid": "MLP intermediate",
    "mlp_out": "MLP output",
    "attn_heads": "key/value heads",
}


@dataclass(frozen=True)
class BlockShape:
    """The dimensions of a decoder (any of families.FAMILIES) that the kept-parameter count depends on."""

    n_blocks: int
    hidden: int
    intermediate: int
    q_dim: int  # attention heads × head dim: read by o_proj, written by q_proj
    kv_dim: int  # key/value heads × head dim
    gated: bool = True  # gate and up read the MLP input; False: one matrix (OPT's fc1)
    kv_heads: int = 1  # key/value heads: the units of head selection (each with its share of q_dim and kv_dim)

    @classmethod
    def from_config(cls, config) -> BlockShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        ffn_dim = getattr(config, "ffn_dim", None)  # OPT names its non-gated MLP's width ffn_dim
        return cls(config.num_hidden_layers, config.hidden_size, ffn_dim or config.intermediate_size,
                   config.num_attention_heads * head_dim, kv_heads * head_dim, gated=ffn_dim is None,
                   kv_heads=kv_heads)

    @property
    def mlp_matrices(self) -> int:
        """Matrices of the MLP: gate, up and down (3), or fc1 and fc2 (2)."""
        return 3 if self.gated else 2

    @property
    def full_widths(self) -> list[int]:
        """Each structure's width in the dense model, in STRUCTURES order."""
        return [self.hidden, self.hidden, self.hidden, self.intermediate, self.hidden, self.kv_heads]

    def block_params(self, widths):
        """Kept linear-layer parameters of blocks whose widths are the last axis of `widths` (6 entries): q/k/v
        read the attention input and write the kept heads, o_proj reads the kept heads and writes the attention
        output, gate/up (fc1 in OPT) read the MLP input and write the intermediate, down reads the intermediate
        and writes the MLP output. Works on tensors (differentiably) and on arrays."""
        a_in, a_out, m_in, mid, m_out, heads = (widths[..., i] for i in range(len(STRUCTURES)))
        q_head, kv_head = self.q_dim // self.kv_heads, self.kv_dim // self.kv_heads  # per key/value head
        reads = self.mlp_matrices - 1
        return heads * (a_in * (q_head + 2 * kv_head) + a_out * q_head) + reads * m_in * mid + mid * m_out

    @property
    def dense_params(self) -> int:
        return int(self.block_params(np.array(self.full_widths))) * self.n_blocks


@dataclass
class Selection:
    """The kept channels (and heads) of every structure: `keep[block][structure]` is a sorted 1-D LongTensor. A
    block given only the five channel selections keeps every head."""

    shape: BlockShape
    keep: list[list[torch.Tensor]]

    def __post_init__(self):
        every_head = torch.arange(self.shape.kv_heads)
        self.keep = [list(block) if len(block) == len(STRUCTURES) else [*block, every_head] for block in self.keep]

    @classmethod
    def full(cls, shape: BlockShape) -> Selection:
        """Everything kept: the compressed model of this selection computes what the dense model does."""
        return cls(shape, [[torch.arange(w) for w in shape.full_widths] for _ in range(shape.n_blocks)])

    @classmethod
    def from_masks(cls, shape: BlockShape, masks: Sequence[torch.Tensor]) -> Selection:
        """From 6 × n_blocks binary masks in block-major STRUCTURES order."""
        flat = [torch.nonzero(m.detach() > 0.5).flatten().cpu() for m in masks]
        return cls(shape, group_by_block(flat))

    @property
    def widths(self) -> np.ndarray:
        """(n_blocks, 6) kept widths."""
        return np.array([[int(k.numel()) for k in block] for block in self.keep], dtype=np.int64)

    @property
    def params(self) -> int:
        return int(self.shape.block_params(self.widths).sum())

    @property
    def ratio(self) -> float:
        """Kept share of the blocks' linear-layer parameters."""
        return self.params / self.shape.dense_params

    def masks(self, device: torch.device | str = "cpu") -> list[list[torch.Tensor]]:
        """Float 0/1 masks per block and structure, as the training-time model takes them."""
        out = []
        for block in self.keep:
            row = []
            for keep, width in zip(block, self.shape.full_widths):
                m = torch.zeros(width, device=device)
                m[keep.to(device)] = 1.0
                row.append(m)
            out.append(row)
        return out


def group_by_block(flat: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Block-major flat list of 6 × n tensors → per block, the six structures' tensors."""
    n = len(STRUCTURES)
    return [list(flat[i : i + n]) for i in range(0, len(flat), n)]


class _Binarise(torch.autograd.Function):
    """Exactly 0/1 forward, identity backward: the straight-through estimator."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def gumbel_sigmoid_ste(logits: torch.Tensor, temperature: float, offset: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """DISP-LLM's Gumbel-sigmoid sample: sigmoid((logits + offset + g) / T) with g ~ Gumbel(0, 1), binarised at
    0.5 in the forward pass while gradients flow through the soft sample (straight-through). Gumbel noise has a
    light left tail: with the offset, a channel is dropped only once its logit has been pushed well down
    (P(keep) = 1 - exp(-exp(logits + offset)))."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1 - 1e-7)
    soft = torch.sigmoid((logits + offset - torch.log(-torch.log(u))) / temperature)
    return _Binarise.apply(soft)


class HyperNetwork(nn.Module):
    """Generates one mask per structure: fixed random inputs (one per structure, seeded, never trained) run
    through a bidirectional GRU; each step's output goes LayerNorm → GELU → its own Linear to the structure's
    width. A large positive offset makes the first masks keep (almost) everything."""

    def __init__(self, widths: Sequence[int], input_size: int = 32, hidden_size: int = 64,
                 temperature: float = 0.4, offset: float = 3.0, seed: int = 0):
        super().__init__()
        self.widths = list(widths)
        self.temperature, self.offset = temperature, offset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.register_buffer("inputs", torch.randn(len(self.widths), 1, input_size))
            self.gru = nn.GRU(input_size, hidden_size, bidirectional=True)
            self.norm = nn.LayerNorm(2 * hidden_size)
            self.heads = nn.ModuleList(nn.Linear(2 * hidden_size, w, bias=False) for w in self.widths)

    def logits(self) -> list[torch.Tensor]:
        out, _ = self.gru(self.inputs)  # (structures, 1, 2 × hidden): the structures are the sequence
        features = F.gelu(self.norm(out[:, 0]))
        return [head(features[i]) for i, head in enumerate(self.heads)]

    def sample(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Binary masks with straight-through gradients, one per structure (training)."""
        return [gumbel_sigmoid_ste(z, self.temperature, self.offset, generator) for z in self.logits()]

    @torch.no_grad()
    def scores(self) -> list[torch.Tensor]:
        """Per channel, logits + offset: the larger, the likelier kept (a sample keeps a channel with
        probability 1 - exp(-exp(score)), so a positive score means kept more often than not)."""
        return [(z + self.offset).float() for z in self.logits()]


def fit_budget(shape: BlockShape, scores: Sequence[torch.Tensor], target: float, align: int = 1) -> Selection:
    """Keep the channels (and heads) whose score exceeds one global threshold, chosen so that the kept share of
    parameters is as close to `target` as a channel allows; each structure keeps at least its best channel
    (an empty structure would leave nothing to compute); an infinite score is always kept (heads that are not
    selected). `scores`: per block, the six structures' in STRUCTURES order. With `align` > 1, each channel
    structure keeps its best k channels, k the count above the threshold rounded to a multiple of `align` (at
    least `align`, at most the full width): GPU matrix kernels run much faster on widths that are multiples of 8
    or 16. Heads are whole units already and are not rounded."""
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"Target ratio {target} is outside (0, 1]; give the share of parameters to keep.")
    if align < 1:
        raise ConfigError(f"Channel alignment {align} must be at least 1.")
    flat = [s.detach().float().cpu() for s in scores]
    order = [torch.argsort(s, descending=True, stable=True) for s in flat]
    ascending = [s[o].flip(0) for s, o in zip(flat, order)]
    full = torch.tensor([len(a) for a in ascending])
    unit = torch.tensor([align] * CHANNELS + [1]).repeat(len(flat) // len(STRUCTURES))

    def counts(threshold: float) -> torch.Tensor:
        above = full - torch.tensor([int(torch.searchsorted(a, threshold, right=True)) for a in ascending])
        rounded = torch.round(above.double() / unit).long() * unit
        return torch.minimum(full, torch.maximum(rounded, unit))

    def ratio(threshold: float) -> float:
        widths = counts(threshold).view(-1, len(STRUCTURES)).double()
        return float(shape.block_params(widths).sum()) / shape.dense_params

    # The kept share falls as the threshold rises; bisect between "everything" and "the floor of each".
    values = torch.cat(flat)
    values = values[values.isfinite()]
    lo, hi = float(values.min()) - 1.0, float(values.max()) + 1.0
    for _ in range(64):
        mid = (lo + hi) / 2
        if ratio(mid) > target:
            lo = mid
        else:
            hi = mid
    threshold = min((lo, hi), key=lambda t: abs(ratio(t) - target))
    keep = [torch.sort(o[:k]).values for o, k in zip(order, counts(threshold).tolist())]
    return Selection(shape, group_by_block(keep))
