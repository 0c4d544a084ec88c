"""The pruning set-up that several benchmarks share, as command-line options and as the EvalConfig they make: the
model, the calibration windows, the cap on test windows, dtype, device and where the data comes from."""

from __future__ import annotations

import argparse

from dsa_core.config import EvalConfig


def add_setup_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--eval-windows", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--data-source", default="local")


def setup_config(args: argparse.Namespace, **settings) -> EvalConfig:
    """The EvalConfig of the options above, plus the script's own `settings`."""
    return EvalConfig(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen, eval_windows=args.eval_windows,
                      dtype=args.dtype, device=args.device, data_source=args.data_source, **settings)
