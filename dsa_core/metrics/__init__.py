"""Pruning metrics as plug-ins: one file per metric in this package, each registering a `Metric` (see base.py).

Every module here is imported when the package is, so adding a metric is adding its file (and its test): the
walkers (dsa_core.prune), the session, the configuration check, the CLI's --metric and the web app's dropdown all
read `METRICS`.
"""

from __future__ import annotations

import importlib
import pkgutil

from dsa_core.metrics.base import METRICS, Metric, check_metric, get_metric, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
_ordered = sorted(METRICS.values(), key=lambda m: m.order)
METRICS.clear()
METRICS.update((m.name, m) for m in _ordered)

__all__ = ["METRICS", "Metric", "check_metric", "get_metric", "register"]
