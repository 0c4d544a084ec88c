"""Zero-shot results side by side: one row per task, for each result its acc and acc_norm, and the number
of examples each score rests on. Plain data and text for the CLI, the bench and the web app's table; no
figures (ui/zeroshot_figures.py draws them) and no scoring.
"""

from __future__ import annotations

from collections.abc import Mapping

from dsa_core.zeroshot.tasks import TASKS

MEAN = "mean"


def task_names(results: Mapping[str, dict]) -> list[str]:
    """Every task found in any result, in the order of first appearance."""
    names: list[str] = []
    for result in results.values():
        names += [n for n in result["tasks"] if n not in names]
    return names


def title(name: str) -> str:
    return TASKS[name].title if name in TASKS else name


def _n(results: Mapping[str, dict], name: str) -> str:
    counts = sorted({r["tasks"][name]["n"] for r in results.values() if name in r["tasks"]})
    return "/".join(str(c) for c in counts)  # differing counts are shown, never hidden


def table(results: Mapping[str, dict]) -> tuple[list[str], list[list]]:
    """Headers and rows: task, n, then "<label> acc" and "<label> acc_norm" for each result (None where a
    task has no acc_norm in lm-eval, or a result lacks the task), and a last row with each result's mean acc
    (its mean acc_norm only where every one of its tasks has one)."""
    headers = ["task", "n"] + [f"{label} {m}" for label in results for m in ("acc", "acc_norm")]
    rows = []
    for name in task_names(results):
        row: list = [title(name), _n(results, name)]
        for r in results.values():
            t = r["tasks"].get(name)
            row += [t["acc"], t["acc_norm"]] if t else [None, None]
        rows.append(row)
    mean_row: list = [MEAN, ""]
    for r in results.values():
        norms = [t["acc_norm"] for t in r["tasks"].values()]
        mean_row += [r["mean_acc"], sum(norms) / len(norms) if None not in norms else None]
    rows.append(mean_row)
    return headers, rows


def format_table(results: Mapping[str, dict]) -> str:
    """The table as aligned text, scores to three decimals, "-" where there is none."""
    headers, rows = table(results)
    cells = [headers] + [[c if isinstance(c, str) else "-" if c is None else f"{c:.3f}" for c in row]
                         for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)
