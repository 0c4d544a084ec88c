"""The decoder families structural pruning supports and where, in one of their blocks, the six selections
act. One entry per family: its dense classes (the compressed model reuses their embedding, rotary embedding or
learned positions, attention masks, final norm and head) and what differs between families (Gemma's (1 + w) norms
after attention and after the MLP, q/k norms, Qwen2's q/k/v biases, OPT's LayerNorms with bias and non-gated ReLU
MLP). Nothing here builds, trains or measures a model.

Not supported: OPT's post-norm blocks (`do_layer_norm_before=False`, opt-350m), refused by `family_of` given the
config, and multimodal Gemma 3 (`gemma3`: the compressed class holds a text model only). OPT's projections in and
out of a narrower word embedding (`word_embed_proj_dim`) are outside the blocks and kept as they are.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn
from transformers.models.gemma2 import modeling_gemma2 as gemma2
from transformers.models.gemma3 import modeling_gemma3 as gemma3
from transformers.models.llama import modeling_llama as llama
from transformers.models.mistral import modeling_mistral as mistral
from transformers.models.opt import modeling_opt as opt
from transformers.models.qwen2 import modeling_qwen2 as qwen2
from transformers.models.qwen3 import modeling_qwen3 as qwen3

from dsa_core.errors import ModelError


@dataclass(frozen=True)
class Family:
    """A dense decoder family: its classes, and how its blocks differ from LLaMA's."""

    arch: str  # the dense config's model_type
    title: str
    config: type
    pretrained: type
    model: type
    causal_lm: type
    norm: type  # the family's RMSNorm (final norm, q/k norms), or LayerNorm (OPT)
    rotary: type | None  # None: learned positions added to the embeddings (OPT)
    embedding: type | None = None  # a scaled embedding (Gemma: × sqrt(hidden)); None: nn.Embedding
    gemma_norms: bool = False  # (1 + w) RMSNorms, plus norms on what attention and the MLP write
    qk_norm: bool = False  # RMSNorm over each head's queries and keys (Qwen3, Gemma 3)
    qkv_bias: bool = False  # q/k/v biases whatever the config says (Qwen2)
    layer_norm: bool = False  # LayerNorms (mean, weight and bias, eps 1e-5) instead of RMSNorms (OPT)
    gated_mlp: bool = True  # gate/up/down; False: fc1 → activation → fc2 (OPT)
    decoder: type | None = None  # the class between the model and its blocks (OPT: model.decoder.layers)
    refused: tuple[tuple[str, object, str], ...] = ()  # (config setting, value, why): configs not supported

    @property
    def disp_type(self) -> str:
        """The compressed model's model_type."""
        return f"disp_{self.arch}"

    @property
    def eager_attention(self):
        """The family's own eager attention (Gemma 2's caps its logits)."""
        return sys.modules[self.model.__module__].eager_attention_forward


FAMILIES = {f.arch: f for f in (
    Family("llama", "LLaMA", llama.LlamaConfig, llama.LlamaPreTrainedModel, llama.LlamaModel,
           llama.LlamaForCausalLM, llama.LlamaRMSNorm, llama.LlamaRotaryEmbedding),
    Family("mistral", "Mistral", mistral.MistralConfig, mistral.MistralPreTrainedModel, mistral.MistralModel,
           mistral.MistralForCausalLM, mistral.MistralRMSNorm, mistral.MistralRotaryEmbedding),
    Family("qwen2", "Qwen2", qwen2.Qwen2Config, qwen2.Qwen2PreTrainedModel, qwen2.Qwen2Model, qwen2.Qwen2ForCausalLM,
           qwen2.Qwen2RMSNorm, qwen2.Qwen2RotaryEmbedding, qkv_bias=True),
    Family("qwen3", "Qwen3", qwen3.Qwen3Config, qwen3.Qwen3PreTrainedModel, qwen3.Qwen3Model, qwen3.Qwen3ForCausalLM,
           qwen3.Qwen3RMSNorm, qwen3.Qwen3RotaryEmbedding, qk_norm=True),
    Family("gemma2", "Gemma 2", gemma2.Gemma2Config, gemma2.Gemma2PreTrainedModel, gemma2.Gemma2Model,
           gemma2.Gemma2ForCausalLM, gemma2.Gemma2RMSNorm, gemma2.Gemma2RotaryEmbedding,
           embedding=gemma2.Gemma2TextScaledWordEmbedding, gemma_norms=True),
    Family("gemma3_text", "Gemma 3", gemma3.Gemma3TextConfig, gemma3.Gemma3PreTrainedModel, gemma3.Gemma3TextModel,
           gemma3.Gemma3ForCausalLM, gemma3.Gemma3RMSNorm, gemma3.Gemma3RotaryEmbedding,
           embedding=gemma3.Gemma3TextScaledWordEmbedding, gemma_norms=True, qk_norm=True),
    Family("opt", "OPT", opt.OPTConfig, opt.OPTPreTrainedModel, opt.OPTModel, opt.OPTForCausalLM, nn.LayerNorm,
           None, layer_norm=True, gated_mlp=False, decoder=opt.OPTDecoder,
           refused=(("do_layer_norm_before", False,
                     "its blocks are post-norm (do_layer_norm_before=False, as in opt-350m): a LayerNorm over the "
                     "whole residual stream after each half-block leaves no norm before attention and the MLP to "
                     "fold into the kept channels, so use a pre-norm OPT such as opt-125m or opt-1.3b"),)),
)}

WHY_NOT = {
    "gemma3": "it is the multimodal Gemma 3; the compressed model holds a text model only (use a text-only "
              "Gemma 3 such as gemma3-270m)",
}


def supported_titles() -> str:
    titles = [f.title for f in FAMILIES.values()]
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def family_of(arch: str, config=None) -> Family:
    """The family of a dense model's model_type (and, given its config, a check of the family's refused settings);
    a sentence for the user when structural pruning cannot do it."""
    if arch in FAMILIES:
        family = FAMILIES[arch]
        for setting, value, why in family.refused if config is not None else ():
            if getattr(config, setting, None) == value:
                raise ModelError(f"Structural pruning does not support this {family.title} model: {why}.")
        return family
    why = f": {WHY_NOT[arch]}" if arch in WHY_NOT else ""
    raise ModelError(f"Structural pruning does not support '{arch}' models{why}. It supports {supported_titles()}.")


@dataclass(frozen=True)
class BlockParts:
    """The modules of one dense block that the selections act on. `attn_norm` and `mlp_norm` read the residual
    stream (their outputs are the attention and MLP inputs); `attn` and `mlp` compute what is written back,
    after `attn_post` / `mlp_post` where the family normalises it (Gemma); `down` reads the intermediate.
    `o_proj` writes attention's output; `mlp_reads` read the MLP input (gate and up, or OPT's fc1). OPT has no MLP
    module: its `mlp` is fc2, whose output is what the MLP writes."""

    attn_norm: nn.Module
    attn: nn.Module
    mlp_norm: nn.Module
    mlp: nn.Module
    down: nn.Module
    o_proj: nn.Module
    mlp_reads: tuple[nn.Module, ...]
    attn_post: nn.Module | None = None
    mlp_post: nn.Module | None = None


def block_parts(block: nn.Module) -> BlockParts:
    if hasattr(block, "fc1"):  # OPT: LayerNorms, out_proj, fc1 → ReLU → fc2 directly in the block
        return BlockParts(block.self_attn_layer_norm, block.self_attn, block.final_layer_norm, block.fc2, block.fc2,
                          block.self_attn.out_proj, (block.fc1,))
    mlp = block.mlp
    reads = (mlp.gate_proj, mlp.up_proj)
    if hasattr(block, "pre_feedforward_layernorm"):  # Gemma: a norm before and after each half
        return BlockParts(block.input_layernorm, block.self_attn, block.pre_feedforward_layernorm, mlp,
                          mlp.down_proj, block.self_attn.o_proj, reads, block.post_attention_layernorm,
                          block.post_feedforward_layernorm)
    return BlockParts(block.input_layernorm, block.self_attn, block.post_attention_layernorm, mlp, mlp.down_proj,
                      block.self_attn.o_proj, reads)
