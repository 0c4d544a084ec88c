"""Zero-shot results side by side: one row per task, for each result its acc and acc_norm, and the number
of examples each score rests on; or the papers' layout, one row per allocation and one column per task. A task
asked for but not available here (see tasks.resolve_sources) keeps its row or column, marked missing, and the
mean says over how many tasks it runs: never a silent mean over fewer tasks. Plain data and text for the CLI,
the bench and the web app's table; no figures (ui/zeroshot_figures.py draws them) and no scoring.
"""

from __future__ import annotations

from collections.abc import Mapping

from dsa_core.zeroshot.tasks import PAPER_TASKS, TASKS

MEAN = "mean"
MISSING = "missing"
ORDER = tuple(dict.fromkeys((*PAPER_TASKS, *TASKS)))  # the papers' seven in their tables' order, then the others


def task_names(results: Mapping[str, dict]) -> list[str]:
    """Every task found in any result, in the order of first appearance."""
    names: list[str] = []
    for result in results.values():
        names += [n for n in result["tasks"] if n not in names]
    return names


def missing_tasks(results: Mapping[str, dict]) -> list[str]:
    """Tasks some result was asked for but could not score (papers' order), and not scored by any other."""
    scored = set(task_names(results))
    found = {n for r in results.values() for n in r.get("missing", {}) if n not in scored}
    return [n for n in ORDER if n in found]


def title(name: str) -> str:
    return TASKS[name].title if name in TASKS else name


def mean_label(results: Mapping[str, dict]) -> str:
    """"mean", or e.g. "mean of 6 (HellaSwag missing)" when some asked task could not be scored."""
    missing = missing_tasks(results)
    if not missing:
        return MEAN
    return f"{MEAN} of {len(task_names(results))} ({', '.join(title(n) for n in missing)} {MISSING})"


def mean_norm(result: dict) -> float | None:
    """Mean acc_norm, only where every scored task has one (acc is never put in its place)."""
    norms = [t["acc_norm"] for t in result["tasks"].values()]
    return sum(norms) / len(norms) if norms and None not in norms else None


def _n(results: Mapping[str, dict], name: str) -> str:
    counts = sorted({r["tasks"][name]["n"] for r in results.values() if name in r["tasks"]})
    return "/".join(str(c) for c in counts)  # differing counts are shown, never hidden


def table(results: Mapping[str, dict]) -> tuple[list[str], list[list]]:
    """Headers and rows: task, n, then "<label> acc" and "<label> acc_norm" for each result (None where a
    task has no acc_norm in lm-eval, or a result lacks the task); a row per missing task with n "missing"; and a
    last row with each result's mean acc (its mean acc_norm only where every one of its tasks has one)."""
    headers = ["task", "n"] + [f"{label} {m}" for label in results for m in ("acc", "acc_norm")]
    rows = []
    for name in task_names(results):
        row: list = [title(name), _n(results, name)]
        for r in results.values():
            t = r["tasks"].get(name)
            row += [t["acc"], t["acc_norm"]] if t else [None, None]
        rows.append(row)
    for name in missing_tasks(results):
        rows.append([title(name), MISSING] + [None, None] * len(results))
    mean_row: list = [mean_label(results), ""]
    for r in results.values():
        mean_row += [r["mean_acc"], mean_norm(r)]
    rows.append(mean_row)
    return headers, rows


def _cells(rows: list[list], headers: list[str]) -> str:
    cells = [headers] + [[c if isinstance(c, str) else "-" if c is None else f"{c:.3f}" for c in row]
                         for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


def format_table(results: Mapping[str, dict]) -> str:
    """The table as aligned text, scores to three decimals, "-" where there is none."""
    headers, rows = table(results)
    return _cells(rows, headers)


def paper_table(results: Mapping[str, dict], metric: str = "acc", stderr: bool = True) -> str:
    """The Wanda/OWL/DSA papers' layout: one row per result (allocation), one column per task (the papers' seven
    in their order, then any other), and the mean of `metric` over the tasks present. Cells read "0.641±0.011"
    (one standard error), "-" where lm-eval defines no such metric for the task, "missing" where the task could not
    be scored. A mean of acc_norm is given only where every task has one."""
    scored = task_names(results)
    order = [n for n in ORDER if n in scored or n in missing_tasks(results)]
    order += [n for n in scored if n not in order]
    headers = ["allocation"] + [title(n) for n in order] + [mean_label(results)]
    rows = []
    for label, r in results.items():
        row = [label]
        for name in order:
            t = r["tasks"].get(name)
            value = t.get(metric) if t else None
            if t is None:
                row.append(MISSING)
            elif value is None:
                row.append("-")
            else:
                se = t.get(f"{metric}_stderr")
                row.append(f"{value:.3f}" + (f"±{se:.3f}" if stderr and se is not None else ""))
        mean = r["mean_acc"] if metric == "acc" else mean_norm(r)
        row.append("-" if mean is None else f"{mean:.3f}")
        rows.append(row)
    return _cells(rows, headers)
