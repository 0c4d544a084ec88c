"""Command-line options generated from a configuration's declared settings (dsa_core.settings): a setting is
declared once, in its configuration, and every command and bench that takes it gets the same option."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from dsa_core.settings import SETUP, declared, flag, help_of

# What every command that loads a model for pruning takes (evaluate, search, export).
MODEL_OPTIONS = (*SETUP, "metric")


def add_options(parser: argparse.ArgumentParser, config: type, names: Iterable[str] | None = None,
                **changes: dict[str, Any]) -> list[str]:
    """One option per declared setting of `config` (those in `names`, all by default), in field order; `changes`
    alters a setting's argparse arguments (a bench's own default, say). An `open` setting offers no choices: its
    configuration's validate() checks what it takes. Returns the settings' names."""
    wanted = None if names is None else set(names)
    added = []
    for f in declared(config):
        if wanted is not None and f.name not in wanted:
            continue
        rules = f.metadata
        if isinstance(f.default, bool):
            kw = {"action": "store_true", "help": help_of(f)}
        else:
            kind = rules.get("type", str if f.default is None else type(f.default))
            kw = {"type": kind, "default": f.default, "help": help_of(f),
                  "choices": None if rules.get("open") else rules.get("choices")}
        parser.add_argument(flag(f.name), **{**kw, **changes.get(f.name, {})})
        added.append(f.name)
    return added


def values(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The parsed values of `config`'s declared settings that `args` holds, as keyword arguments of `config`."""
    return {f.name: getattr(args, f.name) for f in declared(config) if hasattr(args, f.name)}
