"""The compressed model of structural pruning: a LLaMA whose blocks hold physically sliced weights and
each read their own channels of the full-width residual stream (index-select) and write their own back
(index-add). Its config (`DispLlamaConfig`, model type "disp_llama") records every block's five widths; the
channel indices are buffers saved with the weights, so `save_pretrained` / `AutoModelForCausalLM.
from_pretrained` round-trip without remote code once this module is imported.

RMSNorm: the statistic is taken over the full residual stream (as in the dense model and the masked
training-time model), then the block's channels are selected; the norm's weight is folded into the
projections that read it. Within a block, q/k/v are one matrix and gate/up one matrix, since each group
reads the same selected input. `compress` builds the model from a dense one and a Selection; nothing
here trains or scores.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from dsa_core.errors import ModelError
from dsa_core.models import LoadedModel, pick_device, pick_dtype
from dsa_core.structural.selection import BlockShape, Selection

MODEL_TYPE = "disp_llama"


@strict
class DispLlamaConfig(LlamaConfig):
    """A LlamaConfig plus, per block, the widths [attention in, attention out, MLP in, MLP intermediate,
    MLP out]; None means every block keeps its full widths."""

    model_type = MODEL_TYPE
    base_model_tp_plan = None  # the dense plan names q_proj, gate_proj...: layers this model does not have
    disp_widths: list | None = None

    def block_widths(self, layer_idx: int) -> list[int]:
        if self.disp_widths is None:
            return [self.hidden_size] * 3 + [self.intermediate_size, self.hidden_size]
        return [int(w) for w in self.disp_widths[layer_idx]]


def _normed_select(x: torch.Tensor, index: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise over all channels, then keep the block's channels (the norm weight lives downstream)."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps).index_select(-1, index)


class DispAttention(nn.Module):
    """Attention with whole heads reading `width_in` selected channels and writing `width_out` channels."""

    def __init__(self, config: DispLlamaConfig, layer_idx: int, width_in: int, width_out: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        q, kv = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.split = (q, kv, kv)
        self.qkv_proj = nn.Linear(width_in, q + 2 * kv, bias=config.attention_bias)
        self.o_proj = nn.Linear(q, width_out, bias=config.attention_bias)

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The cache argument is `past_key_values` up to transformers 5.2x and `cache` after; accept both.
        cache, legacy = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
        cache = cache if cache is not None else legacy
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in self.qkv_proj(x).split(self.split, dim=-1))
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(self, q, k, v, attention_mask, scaling=self.scaling,
                              dropout=self.attention_dropout if self.training else 0.0, **kwargs)
        return self.o_proj(out.reshape(*x.shape[:-1], -1)), weights


class DispMLP(nn.Module):
    def __init__(self, config: DispLlamaConfig, width_in: int, intermediate: int, width_out: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(width_in, 2 * intermediate, bias=config.mlp_bias)
        self.down_proj = nn.Linear(intermediate, width_out, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class DispDecoderLayer(nn.Module):
    """A block that reads and writes its own subsets of the residual stream's channels."""

    def __init__(self, config: DispLlamaConfig, layer_idx: int):
        super().__init__()
        a_in, a_out, m_in, mid, m_out = config.block_widths(layer_idx)
        self.eps = config.rms_norm_eps
        self.self_attn = DispAttention(config, layer_idx, a_in, a_out)
        self.mlp = DispMLP(config, m_in, mid, m_out)
        for name, width in (("attn_in", a_in), ("attn_out", a_out), ("mlp_in", m_in), ("mlp_out", m_out)):
            self.register_buffer(f"{name}_index", torch.arange(width))

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attn, _ = self.self_attn(_normed_select(hidden_states, self.attn_in_index, self.eps), **kwargs)
        # Out of place: the input may be kept by the caller (recorded hidden states, autograd).
        hidden_states = hidden_states.index_add(-1, self.attn_out_index, attn)
        mlp = self.mlp(_normed_select(hidden_states, self.mlp_in_index, self.eps))
        return hidden_states.index_add(-1, self.mlp_out_index, mlp)


class DispLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = DispLlamaConfig
    _no_split_modules = ["DispDecoderLayer"]
    _can_record_outputs = {"hidden_states": DispDecoderLayer, "attentions": DispAttention}


class DispLlamaModel(DispLlamaPreTrainedModel, LlamaModel):
    """LlamaModel's embedding, rotary embedding, final norm and forward, with DISP blocks."""

    def __init__(self, config: DispLlamaConfig):
        DispLlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(DispDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class DispLlamaForCausalLM(DispLlamaPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: DispLlamaConfig):
        DispLlamaPreTrainedModel.__init__(self, config)
        self.model = DispLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register(MODEL_TYPE, DispLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(DispLlamaConfig, DispLlamaForCausalLM, exist_ok=True)


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)


@torch.no_grad()
def _block_state(block: nn.Module, keep: list[torch.Tensor], prefix: str, dtype: torch.dtype) -> dict:
    """Sliced weights of one dense LlamaDecoderLayer, the norm weights folded in (in float32)."""
    a_in, a_out, m_in, mid, m_out = (k.to(block.input_layernorm.weight.device) for k in keep)
    att, mlp = block.self_attn, block.mlp
    w_in = block.input_layernorm.weight.float()[a_in]
    w_post = block.post_attention_layernorm.weight.float()[m_in]
    state = {
        "self_attn.qkv_proj.weight": torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
        .float()[:, a_in] * w_in,
        "self_attn.qkv_proj.bias": _cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]),
        "self_attn.o_proj.weight": att.o_proj.weight[a_out],
        "self_attn.o_proj.bias": None if att.o_proj.bias is None else att.o_proj.bias[a_out],
        "mlp.gate_up_proj.weight": torch.cat([mlp.gate_proj.weight[mid], mlp.up_proj.weight[mid]])
        .float()[:, m_in] * w_post,
        "mlp.gate_up_proj.bias": None if mlp.gate_proj.bias is None else _cat([mlp.gate_proj.bias[mid],
                                                                              mlp.up_proj.bias[mid]]),
        "mlp.down_proj.weight": mlp.down_proj.weight[m_out][:, mid],
        "mlp.down_proj.bias": None if mlp.down_proj.bias is None else mlp.down_proj.bias[m_out],
        "attn_in_index": a_in, "attn_out_index": a_out, "mlp_in_index": m_in, "mlp_out_index": m_out,
    }
    return {f"{prefix}{k}": (v if v.dtype == torch.long else v.to(dtype)) for k, v in state.items() if v is not None}


@torch.no_grad()
def compress(lm: LoadedModel, selection: Selection) -> nn.Module:
    """The compressed model of a dense LLaMA model and a selection, on the same device and dtype."""
    dense = lm.model
    if lm.arch != "llama":
        raise ModelError(f"Structural pruning supports LLaMA models, not '{lm.arch}'.")
    shape = BlockShape.from_config(dense.config)
    if shape != selection.shape:
        raise ModelError("The selection was made for a model of another shape.")
    settings = {k: v for k, v in dense.config.to_dict().items()
                if k not in ("model_type", "architectures", "transformers_version")}
    settings["disp_widths"] = selection.widths.tolist()
    config = DispLlamaConfig(**settings)
    with torch.device(lm.device):
        model = AutoModelForCausalLM.from_config(config, dtype=lm.dtype,
                                                 attn_implementation=dense.config._attn_implementation)
    state = {k: v for k, v in dense.state_dict().items() if not k.startswith("model.layers.")}
    for i, keep in enumerate(selection.keep):
        state.update(_block_state(lm.blocks[i], keep, f"model.layers.{i}.", lm.dtype))
    model.load_state_dict(state, strict=True)
    model.generation_config = copy.deepcopy(dense.generation_config)
    model.eval()
    model.requires_grad_(False)
    return model


def as_loaded(model: nn.Module, like: LoadedModel, name: str) -> LoadedModel:
    """A compressed model wrapped like the dense one, for dsa_core.evaluate (its blocks are not prunable)."""
    return LoadedModel(model=model, tokenizer=like.tokenizer, name=name, arch=MODEL_TYPE, device=like.device,
                       dtype=like.dtype)


def load_compressed(path: str | Path, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a compressed model saved with `save_pretrained` (and its tokenizer, when saved beside it)."""
    from transformers import AutoTokenizer

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(dev)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not load the compressed model '{path}': {str(e).splitlines()[0]}") from e
    if model.config.model_type != MODEL_TYPE:
        raise ModelError(f"'{path}' holds a '{model.config.model_type}' model, not a compressed one.")
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(path), arch=MODEL_TYPE, device=dev, dtype=dt)
