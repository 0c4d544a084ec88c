"""Command line of the export: `python -m dsa_core export ... --out DIR`.

Prunes the model as `evaluate` would (same options), measures its perplexity unless told not to, and writes the
directory described in dsa_core.export. A thin wrapper over dsa_core.pipeline and dsa_core.export.
"""

from __future__ import annotations

import argparse
import json

from cli.options import MODEL_OPTIONS, add_options, values
from dsa_core.config import EvalConfig


def add_export_parser(sub) -> None:
    e = sub.add_parser("export", help="prune and save the model (safetensors; 2:4 also as compressed-tensors)")
    add_options(e, EvalConfig, (*MODEL_OPTIONS, "allocation", "sparsity", "pattern", "mode", "eval_windows"))
    e.add_argument("--out", required=True, help="directory to write; from_pretrained loads it")
    e.add_argument("--no-eval", action="store_true", help="skip the perplexity measurement")
    e.add_argument("--no-compressed", action="store_true", help="2:4 only: skip the compressed-tensors copy")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    e.add_argument("--json", action="store_true")


def export_command(args: argparse.Namespace) -> int:
    from dsa_core.export import SparsityProfile, export_model
    from dsa_core.pipeline import environment, open_session, prune_with, run_evaluation

    cfg = EvalConfig(**values(args, EvalConfig)).validate()
    session = open_session(cfg)
    if args.no_eval:
        ratios, warnings = prune_with(session, cfg)
        protocol = {"calibration": cfg.calib, "calibration_source": session.calib_origin, "nsamples": cfg.nsamples,
                    "seqlen": cfg.seqlen, "seed": cfg.seed, "mode": cfg.mode}
        extra = {}
    else:
        result = run_evaluation(cfg, session=session)
        ratios, warnings, protocol = result.ratios, result.warnings, result.protocol
        extra = {"perplexity": result.ppl}
    profile = SparsityProfile(allocation=cfg.allocation, ratios=[float(r) for r in ratios], metric=cfg.metric,
                              pattern=cfg.pattern, target=0.0 if cfg.allocation == "dense" else cfg.sparsity,
                              protocol=protocol)
    out = export_model(session, args.out, profile, compressed=False if args.no_compressed else None,
                       overwrite=args.overwrite, extra={**extra, "warnings": warnings,
                                                        "environment": environment(session.lm)})
    summary = {"path": str(out.path), "compressed": str(out.compressed) if out.compressed else None,
               "achieved_sparsity": out.achieved_sparsity, **extra, "ratios": profile.ratios}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"exported            {out.path}")
        if out.compressed:
            print(f"compressed-tensors  {out.compressed}  (2:4, sparse-24-bitmask)")
        print(f"achieved sparsity   {out.achieved_sparsity:.4f}")
        if "perplexity" in extra:
            print(f"perplexity          {extra['perplexity']:.3f}")
        for w in warnings:
            print(f"warning: {w}")
    return 0
