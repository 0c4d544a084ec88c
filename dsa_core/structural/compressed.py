"""The compressed model of structural pruning: a decoder whose blocks hold physically sliced weights and each
read their own channels of the full-width residual stream (index-select) and write their own back (index-add).

One class per family of `families.FAMILIES`, built from the family's own classes: its config plus every
block's six widths (`disp_widths`; model type "disp_<family>", e.g. `DispLlamaConfig`, "disp_llama"), and its
model with the decoder layers replaced, so that the embedding (scaled in Gemma), rotary embedding (per layer type
in Gemma 3) or learned positions and projections in and out of a narrower embedding (OPT), attention masks
(sliding windows), final norm, tied head and logit soft-capping are the family's.
The channel indices are buffers saved with the weights, so `save_pretrained` / `AutoModelForCausalLM.
from_pretrained` round-trip without remote code once this module is imported.

Norms that read the residual stream: the statistic is taken over the full stream (as in the dense model and the
masked training-time model), then the block's channels are selected; the norm's weight (1 + w in Gemma) is
folded into the projections that read it, and OPT's LayerNorm bias into their biases. Gemma's norms on what
attention and the MLP write see only the kept channels, but divide by the full width, as the masked model's norm
does over its zeros. Within a block, q/k/v are one matrix and gate/up one matrix (OPT's fc1 alone: `up_proj`),
since each group reads the same selected input. `compress` builds the model from a dense one and a Selection;
nothing here trains or scores.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.models.opt.modeling_opt import OPTLearnedPositionalEmbedding

from dsa_core.errors import ModelError
from dsa_core.models import BLOCK_PATHS, LoadedModel, pick_device, pick_dtype
from dsa_core.structural.families import FAMILIES, Family, block_parts, family_of
from dsa_core.structural.selection import BlockShape, Selection

LAYER_NORM_EPS = 1e-5  # OPT's LayerNorms: nn.LayerNorm's default


def _normed_select(x: torch.Tensor, index: torch.Tensor, eps: float, layer_norm: bool) -> torch.Tensor:
    """RMS-normalise (or LayerNorm-normalise) over all channels, then keep the block's channels (the norm's weight
    and bias live downstream)."""
    normalise = F.layer_norm if layer_norm else F.rms_norm
    return normalise(x, (x.shape[-1],), eps=eps).index_select(-1, index)


def _biases(config, family: Family, kind: str) -> tuple[bool, bool]:
    """Whether the projections that read the block's input and the one that writes its output have biases: as the
    config says (`attention_bias` / `mlp_bias`, OPT's `enable_bias`), and reads always in Qwen2 (attention) and OPT
    (its LayerNorm's bias is folded into them)."""
    bias = bool(getattr(config, f"{kind}_bias", False) or getattr(config, "enable_bias", False))
    return bias or family.layer_norm or (kind == "attention" and family.qkv_bias), bias


class DispPostNorm(nn.Module):
    """Gemma's norm of what a half-block writes, on its kept channels only: the mean square is over the full
    width (the dropped channels are zeros), in float32, times (1 + w)."""

    def __init__(self, width: int, full: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))
        self.full, self.eps = full, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        out = x32 * torch.rsqrt(x32.pow(2).sum(-1, keepdim=True) / self.full + self.eps)
        return (out * (1.0 + self.weight.float())).type_as(x)


class DispAttention(nn.Module):
    """Attention with `kv_heads` whole key/value heads (each with its query heads) reading `width_in` selected
    channels and writing `width_out` channels."""

    def __init__(self, config, layer_idx: int, width_in: int, width_out: int, kv_heads: int, family: Family):
        super().__init__()
        self.config, self.layer_idx, self.family = config, layer_idx, family
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // _kv_heads(config)
        self.scaling = (getattr(config, "query_pre_attn_scalar", None) or self.head_dim) ** -0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = not getattr(config, "use_bidirectional_attention", False)
        types = getattr(config, "layer_types", None)
        sliding = types is None or types[layer_idx] == "sliding_attention"
        self.sliding_window = getattr(config, "sliding_window", None) if sliding else None
        self.softcap = getattr(config, "attn_logit_softcapping", None)
        kv = kv_heads * self.head_dim
        q = kv * self.num_key_value_groups
        self.split = (q, kv, kv)
        read_bias, write_bias = _biases(config, family, "attention")
        self.qkv_proj = nn.Linear(width_in, q + 2 * kv, bias=read_bias)
        self.o_proj = nn.Linear(q, width_out, bias=write_bias)
        if family.qk_norm:
            self.q_norm = family.norm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = family.norm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The cache argument is `past_key_values` up to transformers 5.2x and `cache` after; accept both.
        cache, legacy = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
        cache = cache if cache is not None else legacy
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (t.view(shape) for t in self.qkv_proj(x).split(self.split, dim=-1))
        if self.family.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if position_embeddings is not None:  # None: learned positions, added to the embeddings (OPT)
            q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, self.family.eager_attention)
        if self.softcap is not None:
            kwargs["softcap"] = self.softcap
        out, weights = attend(self, q, k, v, attention_mask, scaling=self.scaling, sliding_window=self.sliding_window,
                              dropout=self.attention_dropout if self.training else 0.0, **kwargs)
        return self.o_proj(out.reshape(*x.shape[:-1], -1)), weights


class DispMLP(nn.Module):
    """Gated (gate/up in one matrix, then down) or, in OPT, fc1 (`up_proj`) → activation → fc2 (`down_proj`)."""

    def __init__(self, config, width_in: int, intermediate: int, width_out: int, family: Family):
        super().__init__()
        read_bias, write_bias = _biases(config, family, "mlp")
        self.gated = family.gated_mlp
        if self.gated:
            self.gate_up_proj = nn.Linear(width_in, 2 * intermediate, bias=read_bias)
        else:
            self.up_proj = nn.Linear(width_in, intermediate, bias=read_bias)
        self.down_proj = nn.Linear(intermediate, width_out, bias=write_bias)
        act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
        self.act_fn = ACT2FN[act or config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.down_proj(self.act_fn(self.up_proj(x)))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class DispDecoderLayer(nn.Module):
    """A block that reads and writes its own subsets of the residual stream's channels."""

    def __init__(self, config, layer_idx: int, family: Family):
        super().__init__()
        a_in, a_out, m_in, mid, m_out, heads = config.block_widths(layer_idx)
        self.layer_norm = family.layer_norm
        self.eps = LAYER_NORM_EPS if family.layer_norm else config.rms_norm_eps
        self.self_attn = DispAttention(config, layer_idx, a_in, a_out, heads, family)
        self.mlp = DispMLP(config, m_in, mid, m_out, family)
        self.post_attention_norm = DispPostNorm(a_out, config.hidden_size, self.eps) if family.gemma_norms else None
        self.post_mlp_norm = DispPostNorm(m_out, config.hidden_size, self.eps) if family.gemma_norms else None
        for name, width in (("attn_in", a_in), ("attn_out", a_out), ("mlp_in", m_in), ("mlp_out", m_out)):
            self.register_buffer(f"{name}_index", torch.arange(width))

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attn, _ = self.self_attn(_normed_select(hidden_states, self.attn_in_index, self.eps, self.layer_norm),
                                 **kwargs)
        if self.post_attention_norm is not None:
            attn = self.post_attention_norm(attn)
        # Out of place: the input may be kept by the caller (recorded hidden states, autograd).
        hidden_states = hidden_states.index_add(-1, self.attn_out_index, attn)
        mlp = self.mlp(_normed_select(hidden_states, self.mlp_in_index, self.eps, self.layer_norm))
        if self.post_mlp_norm is not None:
            mlp = self.post_mlp_norm(mlp)
        return hidden_states.index_add(-1, self.mlp_out_index, mlp)


def _kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _block_widths(self, layer_idx: int) -> list[int]:
    """A block's six widths; five (models saved before heads could be selected) keep every head."""
    if self.disp_widths is None:
        return [self.hidden_size] * 3 + [getattr(self, "ffn_dim", None) or self.intermediate_size, self.hidden_size,
                                         _kv_heads(self)]
    widths = [int(w) for w in self.disp_widths[layer_idx]]
    return widths if len(widths) == 6 else [*widths, _kv_heads(self)]


def _model_init(self, config) -> None:
    """The family's model __init__ with DISP layers (the dense layers are never built)."""
    family = self.disp_family
    PreTrainedModel.__init__(self, config)
    self.padding_idx, self.vocab_size = config.pad_token_id, config.vocab_size
    if family.embedding is None:
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
    else:
        self.embed_tokens = family.embedding(config.vocab_size, config.hidden_size, self.padding_idx,
                                             embed_scale=config.hidden_size**0.5)
    self.layers = nn.ModuleList(DispDecoderLayer(config, i, family) for i in range(config.num_hidden_layers))
    self.norm = family.norm(config.hidden_size, eps=config.rms_norm_eps)
    self.rotary_emb = family.rotary(config)
    self.gradient_checkpointing = False
    if getattr(config, "layer_types", None) is not None:
        self.has_sliding_layers = "sliding_attention" in config.layer_types
    self.post_init()


def _decoder_init(self, config) -> None:
    """OPT's decoder __init__ with DISP layers: token embeddings of `word_embed_proj_dim` (projected in and out when
    it differs from the hidden size), learned positions, the final LayerNorm (pre-norm models only)."""
    PreTrainedModel.__init__(self, config)
    self.dropout, self.layerdrop = config.dropout, config.layerdrop
    self.padding_idx, self.vocab_size = config.pad_token_id, config.vocab_size
    self.max_target_positions = config.max_position_embeddings
    embed, hidden = config.word_embed_proj_dim, config.hidden_size
    self.embed_tokens = nn.Embedding(config.vocab_size, embed, self.padding_idx)
    self.embed_positions = OPTLearnedPositionalEmbedding(config.max_position_embeddings, hidden)
    self.project_out = nn.Linear(hidden, embed, bias=False) if embed != hidden else None
    self.project_in = nn.Linear(embed, hidden, bias=False) if embed != hidden else None
    self.final_layer_norm = None if config._remove_final_layer_norm else \
        nn.LayerNorm(hidden, elementwise_affine=config.layer_norm_elementwise_affine)
    self.layers = nn.ModuleList(DispDecoderLayer(config, i, self.disp_family) for i in range(config.num_hidden_layers))
    self.gradient_checkpointing = False
    self.post_init()


def _decoder_model_init(self, config) -> None:
    PreTrainedModel.__init__(self, config)
    self.decoder = self.disp_decoder_class(config)
    self.post_init()


def _causal_lm_init(self, config) -> None:
    PreTrainedModel.__init__(self, config)
    self.model = self.disp_model_class(config)
    self.vocab_size = config.vocab_size
    head_in = getattr(config, "word_embed_proj_dim", None) or config.hidden_size  # OPT's head reads the embedding
    self.lm_head = nn.Linear(head_in, config.vocab_size, bias=False)
    self.post_init()


def _compressed_classes(family: Family) -> tuple[type, type]:
    """The config and causal-LM classes of a family's compressed model, registered with the Auto classes."""
    stem = "Disp" + family.causal_lm.__name__.removesuffix("ForCausalLM")

    @strict
    class Config(family.config):
        """The family's config plus, per block, the widths [attention in, attention out, MLP in, MLP
        intermediate, MLP out, key/value heads]; None means every block keeps its full widths."""

        model_type = family.disp_type
        base_model_tp_plan = None  # the dense plan names q_proj, gate_proj...: layers this model does not have
        disp_widths: list | None = None
        block_widths = _block_widths

    pretrained = type(f"{stem}PreTrainedModel", (family.pretrained,), {
        "config_class": Config, "_no_split_modules": ["DispDecoderLayer"],
        "_can_record_outputs": {"hidden_states": DispDecoderLayer, "attentions": DispAttention},
        "disp_family": family, "__module__": __name__})
    if family.decoder is None:
        model = type(f"{stem}Model", (pretrained, family.model), {"__init__": _model_init, "__module__": __name__})
    else:  # OPT: the model holds a decoder, which holds the blocks
        decoder = type(f"{stem}Decoder", (pretrained, family.decoder), {"__init__": _decoder_init,
                                                                         "__module__": __name__})
        model = type(f"{stem}Model", (pretrained, family.model), {
            "__init__": _decoder_model_init, "disp_decoder_class": decoder, "__module__": __name__})
    causal_lm = type(f"{stem}ForCausalLM", (pretrained, family.causal_lm), {
        "__init__": _causal_lm_init, "disp_model_class": model, "__module__": __name__})
    Config.__name__ = Config.__qualname__ = f"{stem}Config"
    AutoConfig.register(family.disp_type, Config, exist_ok=True)
    AutoModelForCausalLM.register(Config, causal_lm, exist_ok=True)
    return Config, causal_lm


COMPRESSED = {arch: _compressed_classes(family) for arch, family in FAMILIES.items()}
DispLlamaConfig, DispLlamaForCausalLM = COMPRESSED["llama"]
DISP_TYPES = {family.disp_type for family in FAMILIES.values()}


def _folded(norm: nn.Module, reads: list[nn.Linear], rows: list[torch.Tensor], cols: torch.Tensor, unit: float,
            bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One matrix of the projections `reads` (each its rows in `rows`) on the kept input channels `cols`, with the
    reading norm's weight (plus `unit`: Gemma's 1 + w) folded in, and its bias (OPT's LayerNorm) into the bias:
    W·(x̂·w + b) + c = (W·w)·x̂ + (W·b + c). In float32; a bias when `bias` (zeros where nothing gives one)."""
    weight = torch.cat([r.weight[k] for r, k in zip(reads, rows)]).float()[:, cols]
    out_bias = None
    if bias:
        out_bias = torch.cat([torch.zeros(k.numel(), device=weight.device) if r.bias is None else r.bias[k].float()
                              for r, k in zip(reads, rows)])
        if getattr(norm, "bias", None) is not None:
            out_bias = out_bias + weight @ norm.bias.float()[cols]
    norm_weight = getattr(norm, "weight", None)  # OPT's LayerNorms may have none (layer_norm_elementwise_affine)
    return (weight if norm_weight is None else weight * (norm_weight.float()[cols] + unit)), out_bias


def _head_rows(heads: torch.Tensor, per_head: int) -> torch.Tensor:
    """The rows of a projection that belong to the kept key/value heads `heads`, `per_head` rows each."""
    return (heads[:, None] * per_head + torch.arange(per_head, device=heads.device)).flatten()


@torch.no_grad()
def _block_state(block: nn.Module, keep: list[torch.Tensor], prefix: str, dtype: torch.dtype, family: Family,
                 config) -> dict:
    """Sliced weights of one dense decoder layer, the reading norms' weights (and biases) folded in (in float32)."""
    parts = block_parts(block)
    a_in, a_out, m_in, mid, m_out, heads = (k.to(parts.o_proj.weight.device) for k in keep)
    att, down = parts.attn, parts.down
    unit = 1.0 if family.gemma_norms else 0.0  # Gemma's norms multiply by (1 + w)
    attn_bias, mlp_bias = _biases(config, family, "attention")[0], _biases(config, family, "mlp")[0]
    kv_rows = _head_rows(heads, att.k_proj.out_features // _kv_heads(config))
    q_rows = _head_rows(heads, att.q_proj.out_features // _kv_heads(config))  # the query heads of those keys
    qkv, qkv_bias = _folded(parts.attn_norm, [att.q_proj, att.k_proj, att.v_proj], [q_rows, kv_rows, kv_rows], a_in,
                            unit, attn_bias)
    up, up_bias = _folded(parts.mlp_norm, list(parts.mlp_reads), [mid] * len(parts.mlp_reads), m_in, unit, mlp_bias)
    up_name = "gate_up_proj" if family.gated_mlp else "up_proj"
    state = {
        "self_attn.qkv_proj.weight": qkv, "self_attn.qkv_proj.bias": qkv_bias,
        "self_attn.o_proj.weight": parts.o_proj.weight[a_out][:, q_rows],
        "self_attn.o_proj.bias": None if parts.o_proj.bias is None else parts.o_proj.bias[a_out],
        f"mlp.{up_name}.weight": up, f"mlp.{up_name}.bias": up_bias,
        "mlp.down_proj.weight": down.weight[m_out][:, mid],
        "mlp.down_proj.bias": None if down.bias is None else down.bias[m_out],
        "attn_in_index": a_in, "attn_out_index": a_out, "mlp_in_index": m_in, "mlp_out_index": m_out,
    }
    if family.qk_norm:
        state["self_attn.q_norm.weight"], state["self_attn.k_norm.weight"] = att.q_norm.weight, att.k_norm.weight
    if family.gemma_norms:
        state["post_attention_norm.weight"] = parts.attn_post.weight[a_out]
        state["post_mlp_norm.weight"] = parts.mlp_post.weight[m_out]
    return {f"{prefix}{k}": (v if v.dtype == torch.long else v.to(dtype)) for k, v in state.items() if v is not None}


@torch.no_grad()
def compress(lm: LoadedModel, selection: Selection) -> nn.Module:
    """The compressed model of a dense model of a supported family and a selection, on its device and dtype."""
    dense = lm.model
    family = family_of(lm.arch, dense.config)
    shape = BlockShape.from_config(dense.config)
    if shape != selection.shape:
        raise ModelError("The selection was made for a model of another shape.")
    settings = {k: v for k, v in dense.config.to_dict().items()
                if k not in ("model_type", "architectures", "transformers_version")}
    settings["disp_widths"] = selection.widths.tolist()
    config_class, _ = COMPRESSED[family.arch]
    config = config_class(**settings)
    with torch.device(lm.device):
        model = AutoModelForCausalLM.from_config(config, dtype=lm.dtype,
                                                 attn_implementation=dense.config._attn_implementation)
    blocks = BLOCK_PATHS[lm.arch] + "."
    state = {k: v for k, v in dense.state_dict().items() if not k.startswith(blocks)}
    for i, keep in enumerate(selection.keep):
        state.update(_block_state(lm.blocks[i], keep, f"{blocks}{i}.", lm.dtype, family, dense.config))
    model.load_state_dict(state, strict=True)
    model.generation_config = copy.deepcopy(dense.generation_config)
    model.eval()
    model.requires_grad_(False)
    return model


def as_loaded(model: nn.Module, like: LoadedModel, name: str) -> LoadedModel:
    """A compressed model wrapped like the dense one, for dsa_core.evaluate (its blocks are not prunable)."""
    return LoadedModel(model=model, tokenizer=like.tokenizer, name=name, arch=model.config.model_type,
                       device=like.device, dtype=like.dtype)


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
    if model.config.model_type not in DISP_TYPES:
        raise ModelError(f"'{path}' holds a '{model.config.model_type}' model, not a compressed one.")
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(path), arch=model.config.model_type, device=dev,
                       dtype=dt)
