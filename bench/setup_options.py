"""The pruning set-up that several benchmarks share, as command-line options and as the EvalConfig they make: the
model, the calibration windows, the cap on test windows, dtype, device and where the data comes from. The options are
generated from EvalConfig's declarations (cli.options), as the CLI's are; a bench reads the shipped WikiText-2 copy
unless told otherwise, so that its numbers do not depend on the network."""

from __future__ import annotations

import argparse

from cli.options import add_options
from dsa_core.config import EvalConfig

SETUP_OPTIONS = ("model", "nsamples", "seqlen", "eval_windows", "dtype", "device", "data_source")


def add_setup_options(ap: argparse.ArgumentParser) -> None:
    add_options(ap, EvalConfig, SETUP_OPTIONS, data_source={"default": "local"})


def setup_config(args: argparse.Namespace, **settings) -> EvalConfig:
    """The EvalConfig of the options above, plus the script's own `settings`."""
    return EvalConfig(**{name: getattr(args, name) for name in SETUP_OPTIONS}, **settings)
