"""Structural pruning after DISP-LLM (Gao et al., NeurIPS 2024): every decoder block reads and writes its own
subset of the hidden dimension, so widths differ per block and per side, with no extra projections.

    selection  the six selection structures of a block (five of channels, one of heads), the parameter count they
               keep, the hypernetwork
    families   the supported decoder families (LLaMA, Mistral, Qwen2/3, Gemma 2/3, OPT) and their blocks' parts
    masking    the training-time model: hooks that multiply a frozen decoder's activations by the masks
    training   the run's configuration and the hypernetwork's training loop
    baseline   uniform widths with one shared index set, chosen by activation norms
    compressed the physically sliced model class (index-select in, index-add out), registered with Auto*
    runner     one run end to end: train, compress, baseline, perplexity; a result dict for CLI, UI, storage

Importing this package registers the compressed model type with transformers' Auto classes.
"""

from dsa_core.structural import compressed as _compressed  # noqa: F401  (registers the Auto classes)
