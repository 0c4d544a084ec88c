"""The pruning papers' zero-shot table (Wanda, OWL, DSA): dense, then uniform, OWL, AlphaPruning, ATP, the DSA
preset and a searched allocation at each sparsity (Wanda, sequential), each pruned from the same dense weights
and calibration windows and scored by lm-evaluation-harness on every task's full split; per task acc and
acc_norm with one standard error, and the mean over the tasks present (a task that could not be scored is
shown as missing and named beside the mean). Optionally, the dense scores next to lm-eval's own CLI on the same
model, saved to a folder, and the same local files.

    python bench/bench_zeroshot.py --tasks paper --data-source local            # GPU: the whole table
    python bench/bench_zeroshot.py --searched 0.7=@search70.json --searched 0.5=@search50.json
    python bench/bench_zeroshot.py --search-seconds 120 --search-space hybrid  # search here, on WikiText-2 val
    python bench/bench_zeroshot.py --search-seconds 300 --search-fitness ppl --search-fitness zeroshot:paper \
        --allocations dense,uniform,owl    # perplexity- vs accuracy-searched: do their zero-shot means differ?
    python bench/bench_zeroshot.py --lm-eval-cli runs/lm_eval_check --allocations dense   # the CLI cross-check
    python bench/bench_zeroshot.py --device cpu --limit 20 --nsamples 8 --seqlen 256 --atp-beta 0.01  # CPU check

--searched takes [SPARSITY=]SPEC, repeatable: a function's text or any allocation spec (at every sparsity), or,
for one sparsity, "ratios:...", "levels:..." (a direct search's key, --level-step grid) or "@file.json" (the
output of `search --json`). With a zero-shot search fitness (here or --exclude-fitness-rows), every table leaves out
the rows that fitness measured and says so, so that no allocation is scored on rows it was searched on. The seconds
count scoring only (lm-eval's requests, forwards, metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.options import add_options  # noqa: E402
from dsa_core import functions  # noqa: E402
from dsa_core.config import EvalConfig  # noqa: E402
from dsa_core.pipeline import environment, oom_as_error, open_session  # noqa: E402
from dsa_core.reporter import Reporter  # noqa: E402
from dsa_core.zeroshot.compare import compare_allocations, read_allocation  # noqa: E402
from dsa_core.zeroshot.harness import evaluate_tasks  # noqa: E402
from dsa_core.zeroshot.report import mean_label, missing_tasks, paper_table  # noqa: E402

REFERENCES = ("uniform", "owl", "alpha", "atp", "dsa preset")
SPECS = {"uniform": "uniform", "owl": "owl", "alpha": "alpha", "dsa preset": functions.to_text(functions.DSA_PRESET)}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(ap, EvalConfig, ("model", "device", "dtype", "data_source", "metric", "mode", "nsamples", "seqlen",
                                 "seed"))
    ap.add_argument("--tasks", default="paper", help="zero-shot tasks (default: the papers' seven)")
    ap.add_argument("--limit", type=int, default=None, help="examples per task (default: the whole split)")
    ap.add_argument("--tasks-data", default=None)
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--allocations", default="dense," + ",".join(REFERENCES),
                    help=f"labels among dense, {', '.join(REFERENCES)}")
    ap.add_argument("--searched", action="append", default=[], metavar="[SPARSITY=]SPEC")
    ap.add_argument("--search-seconds", type=float, default=None, help="run a search of this many seconds per "
                    "sparsity here and add its best allocation as 'searched'")
    ap.add_argument("--search-space", default="hybrid", choices=("function", "allocation", "hybrid"))
    ap.add_argument("--search-fitness", action="append", default=None, help="the searches' fitness (default ppl); "
                    "repeat it (e.g. ppl and zeroshot:paper) to search once per fitness and compare their means")
    ap.add_argument("--zeroshot-rows", type=int, default=200, help="a zeroshot:TASKS search fitness's rows per task")
    ap.add_argument("--exclude-fitness-rows", type=int, default=None, help="leave out of every table the rows a "
                    "zero-shot fitness of this many rows per task measures (default: --zeroshot-rows when a search "
                    "here uses one, else 0)")
    ap.add_argument("--level-step", type=float, default=0.01, help="the grid of --searched levels:...")
    ap.add_argument("--atp-beta", default="auto", help="ATP's β, or auto: searched on WikiText-2 validation "
                    "perplexity (8 windows), as its paper searches it")
    ap.add_argument("--batch-size", type=int, default=None, help="zero-shot batch (default 64 on GPU, 8 on CPU)")
    ap.add_argument("--lm-eval-cli", default=None, metavar="DIR", help="also score the dense model with lm-eval's "
                    "own CLI (model saved to DIR/model, local files) and compare, to the third decimal")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every result (without samples) here")
    args = ap.parse_args(argv)
    wanted = [a.strip() for a in args.allocations.split(",") if a.strip()]
    unknown = set(wanted) - {"dense", *REFERENCES}
    if unknown:
        ap.error(f"unknown allocations {', '.join(sorted(unknown))}")
    args.wanted = wanted
    args.search_fitness = args.search_fitness or ["ppl"]
    if args.exclude_fitness_rows is None:
        zeroshot = any(f.startswith("zeroshot:") for f in args.search_fitness) and args.search_seconds
        args.exclude_fitness_rows = args.zeroshot_rows if zeroshot else 0
    args.targets = [float(s) for s in args.sparsities.split(",") if s.strip()]
    return args


def searched_specs(args, session, cfg: EvalConfig, target: float) -> list[tuple[str, object]]:
    """The --searched allocations that apply at `target` (labelled "searched", "searched 2", ...), then a search
    run here when --search-seconds is given."""
    stats = session.stats(cfg.metric)
    out = []
    for item in args.searched:
        head, eq, rest = item.partition("=")
        scoped = bool(eq) and head.replace(".", "", 1).isdigit()
        if scoped and abs(float(head) - target) > 1e-9:
            continue
        out.append(read_allocation(rest if scoped else item, stats, target, args.level_step))
    labels = ["searched" if i == 0 else f"searched {i + 1}" for i in range(len(out))]
    for fitness in args.search_fitness if args.search_seconds else ():
        out.append(run_short_search(args, session, cfg, target, fitness))
        labels.append(f"searched {fitness}" if len(args.search_fitness) > 1 else "searched")
    return list(zip(labels, out))


def run_short_search(args, session, cfg: EvalConfig, target: float, fitness: str) -> list[float]:
    import optuna

    from dsa_core.search import run_search
    from dsa_core.search_config import SearchConfig
    from dsa_core.studies import create_study

    scfg = SearchConfig(model=cfg.model, metric=cfg.metric, sparsity=target, nsamples=cfg.nsamples,
                        seqlen=cfg.seqlen, seed=cfg.seed, data_source=cfg.data_source, device=cfg.device,
                        dtype=cfg.dtype, space=args.search_space, fitness=fitness, zeroshot_rows=args.zeroshot_rows,
                        budget_candidates=None, budget_seconds=args.search_seconds).validate()
    start = time.perf_counter()
    result = run_search(session, scfg, create_study(scfg, optuna.storages.InMemoryStorage()))
    session.restore()
    print(f"# search at {target:.0%}: {scfg.space} on {scfg.fitness}, {result.evaluated} candidates in "
          f"{time.perf_counter() - start:.0f} s; best {result.best.text[:80]} (fitness {result.best.fitness:.4g})",
          flush=True)
    return [float(r) for r in result.best.ratios]


def atp_spec(args, session, cfg: EvalConfig, target: float) -> str:
    if args.atp_beta != "auto":
        return f"atp:beta={float(args.atp_beta):g}"
    from dsa_core.comparison import atp_beta
    from dsa_core.fitness import Fitness

    beta = atp_beta(Fitness(session, cfg.metric, target, "ppl", [8]), target)
    session.restore()
    return f"atp:beta={beta:g}"


def where(data: dict) -> str:
    """A task's data in one word: its hub id, or its files' SHA-256 (first 12 hex; full in --json)."""
    return data.get("hub") or "sha256 " + "+".join(f["sha256"][:12] for f in data["files"])


def print_tables(results: dict[str, dict], target: float | None) -> None:
    where = "dense" if target is None else f"Wanda {target:.0%}"
    for metric in ("acc", "acc_norm"):
        print(f"\n## {where}, {metric} (± one standard error)")
        print(paper_table(results, metric))
    searched = {label: r["mean_acc"] for label, r in results.items() if label.startswith("searched ")}
    if len(searched) > 1:  # one search per --search-fitness: do perplexity and accuracy find different allocations?
        best = max(searched, key=searched.get)
        print("# searched allocations' mean acc: " + ", ".join(f"{k} {v:.4f}" for k, v in searched.items())
              + f"; best {best}, by {searched[best] - min(searched.values()):.4f}")
    missing = missing_tasks(results)
    if missing:
        print(f"# {mean_label(results)}: {next(iter(results.values()))['protocol']['mean']}")


def lm_eval_check(args, session, dense: dict) -> None:
    from dsa_core.zeroshot import lm_eval_cli
    from dsa_core.zeroshot.tasks import resolve_sources

    session.restore()
    sources = resolve_sources(args.tasks, args.tasks_data, "local")
    start = time.perf_counter()
    theirs = lm_eval_cli.run(session.lm, sources, Path(args.lm_eval_cli), dense["protocol"]["batch_size"], args.limit,
                             log=lambda line: print(f"# {line}", flush=True))
    rows, ok = lm_eval_cli.compare(dense, theirs)
    print(f"\n## dense: ours (in process) against lm-eval's CLI ({time.perf_counter() - start:.0f} s)")
    print(lm_eval_cli.format_comparison(rows))
    gap = lm_eval_cli.max_loglikelihood_gap(dense, theirs)
    print(f"# largest |log-likelihood difference| of one choice: {gap:.2e}" if gap is not None else "")
    print(f"# {'every score equal to the third decimal' if ok else 'SOME SCORES DIFFER beyond 5e-4'}")


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = EvalConfig(model=args.model, device=args.device, dtype=args.dtype, sparsity=(args.targets or [0.5])[0],
                     metric=args.metric, mode=args.mode, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                     data_source=args.data_source, tasks=args.tasks, tasks_limit=args.limit,
                     tasks_data=args.tasks_data).validate()
    for target in args.targets:
        replace(cfg, sparsity=target).validate()
    start = time.perf_counter()
    session = open_session(cfg)
    env = environment(session.lm)
    print(f"# {env.get('device') or session.lm.device} | {env['dtype']} | torch {env['torch']} | transformers "
          f"{env['transformers']} | model {cfg.model or 'smollm2'} | {cfg.metric} {cfg.mode} | calibration "
          f"{cfg.nsamples}×{cfg.seqlen}, seed {cfg.seed} | load {session.timings['load']:.1f} s", flush=True)
    print(f"{'sparsity':>8} {'allocation':<12} {'task':<14} {'acc':>6} {'acc_norm':>8} {'n':>6} {'seconds':>8}",
          flush=True)
    seconds: dict[str, float] = {}

    def row(target: float, label: str, result: dict) -> None:
        seconds[f"{label} {target:.0%}"] = result["seconds"]
        for name, t in result["tasks"].items():
            norm = "-" if t["acc_norm"] is None else f"{t['acc_norm']:.4f}"
            print(f"{target:8.0%} {label:<12} {name:<14} {t['acc']:6.4f} {norm:>8} {t['n']:6d} "
                  f"{result['seconds']:8.2f}", flush=True)
        for name in result["missing"]:
            print(f"{target:8.0%} {label:<12} {name:<14} {'missing':>6}", flush=True)

    class Rows(Reporter):
        """Prints each allocation's scores as they come."""

        def __init__(self, target: float):
            super().__init__()
            self.target = target

        def on_event(self, measured) -> None:
            row(self.target, measured.label, measured.zeroshot)

    everything: dict[str, dict] = {}
    dense = None
    if "dense" in args.wanted or args.lm_eval_cli:
        session.restore()
        with oom_as_error("scoring the zero-shot tasks"):
            dense = evaluate_tasks(session.lm, cfg.tasks, cfg.tasks_limit, cfg.tasks_data, cfg.data_source,
                                   args.batch_size, session.progress, keep_samples=bool(args.lm_eval_cli),
                                   exclude=args.exclude_fitness_rows)
        dense.update(allocation="dense", achieved_sparsity=0.0)
        row(0.0, "dense", dense)
        everything["dense"] = dense
    for target in args.targets:
        tcfg = replace(cfg, sparsity=target).validate()
        specs = [(label, SPECS.get(label) or atp_spec(args, session, tcfg, target))
                 for label in REFERENCES if label in args.wanted]
        specs += searched_specs(args, session, tcfg, target)
        results = compare_allocations(session, tcfg, references=specs, batch_size=args.batch_size,
                                      exclude=args.exclude_fitness_rows, reporter=Rows(target))
        everything |= {f"{label} {target:g}": r for label, r in results.items()}
        print_tables(({"dense": dense} if dense and "dense" in args.wanted else {}) | results, target)
    if dense and not args.targets:
        print_tables({"dense": dense}, None)
    protocol = next(iter(everything.values()))["protocol"]
    print(f"\n# {protocol['harness']}, zero-shot, batch {protocol['batch_size']}, data {protocol['source']}; "
          + "; ".join(f"{n} {where(d)}" for n, d in protocol["data"].items()))
    if protocol.get("excluded"):
        print(f"# every table: {protocol['excluded']}")
    for label, r in everything.items():
        if r.get("allocation", "").startswith(("atp", "ratios")) or label.startswith("searched"):
            print(f"# {label}: {r['allocation'][:160]}")
    print("# scoring seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
          + f"; all scoring {sum(seconds.values()):.1f}")
    print("# seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in session.timings.items())
          + f", total {time.perf_counter() - start:.1f}")
    if args.lm_eval_cli:
        lm_eval_check(args, session, dense)
    if args.json:
        for r in everything.values():
            for t in r["tasks"].values():
                t.pop("samples", None)
        Path(args.json).write_text(json.dumps({"environment": env, "results": everything}, indent=1))


if __name__ == "__main__":
    main()
