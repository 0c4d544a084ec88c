"""The search on a real model, as a user gets it: the first-ranked result of a search against uniform, OWL,
AlphaPruning, ATP (β searched on the same validation fitness) and the DSA preset, with the faithful protocol
(sequential pruning, WikiText-2 test); candidates per second per fidelity stage; the fitnesses' rank correlation
with test perplexity; transfer of a found function to other targets and models.

Each measurement is one job writing one JSON file, so jobs run in parallel (several per GPU) and a job cut short
loses nothing of the others; `report` prints the tables from a folder of them.

    python bench/bench_search.py refs --metric wanda --target 0.7 --out runs/b          # baselines + correlation
    python bench/bench_search.py run --metric wanda --target 0.7 --space hybrid --seconds 120 --seed 0 --out runs/b
    python bench/bench_search.py transfer --from runs/b/smollm2_wanda_70_hybrid_s0.json --targets 0.6,0.8 \
        --model gemma3-270m --out runs/b
    python bench/bench_search.py report runs/b
    python bench/bench_search.py run --nsamples 8 --seqlen 256 --fidelity 256,1k --eval-windows 4 --seconds 30 \
        --target 0.6 --out /tmp/b                                                       # CPU smoke run

Searches fit the fitness on WikiText-2 validation (ppl) or calibration tokens (kl); only the final rows read the
test split, and the result reported is the search's first-ranked candidate, never the best by test perplexity.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core import (
    comparison,  # noqa: E402
    search,  # noqa: E402
)
from dsa_core.allocation import allocate  # noqa: E402
from dsa_core.errors import DSAError  # noqa: E402
from dsa_core.fitness import LAST_STAGES, Fitness  # noqa: E402
from dsa_core.levels import LevelGrid, unit_sizes  # noqa: E402
from dsa_core.pipeline import environment, open_session  # noqa: E402
from dsa_core.reporter import EventLog  # noqa: E402
from dsa_core.search_config import GRANULARITIES, REFINERS, SPACES, SearchConfig  # noqa: E402
from dsa_core.search_result import Candidate  # noqa: E402
from dsa_core.session import PruningSession  # noqa: E402
from dsa_core.spaces import function_text  # noqa: E402
from dsa_core.studies import create_study, search_space  # noqa: E402

FITNESS_KINDS = ("ppl", "kl")


def model_name(args) -> str:
    return (args.model or "smollm2").replace("/", "_").replace(":", "_")


def job_path(args, kind: str, extra: str = "") -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fitness = args.fitness + ("_seq" if args.last_stage == "sequential" else "")
    return out / f"{model_name(args)}_{args.metric}_{round(args.target * 100)}_{fitness}_{kind}{extra}.json"


def open_job(args) -> tuple[PruningSession, float]:
    """The job's session, its scores computed, and the dense model's test perplexity (printed first, so that a
    broken model, such as a GGUF file misread by another transformers version, shows before any search runs)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    session = open_session(setup_config(args))
    dense_ppl = session.perplexity("wikitext2", "test", args.seqlen, args.eval_windows)
    print(f"dense {session.lm.name}: WikiText-2 test perplexity {dense_ppl:.3f}", flush=True)
    session.scores(args.metric)
    return session, dense_ppl


def search_config(args, **kw) -> SearchConfig:
    return SearchConfig(model=args.model, metric=args.metric, sparsity=args.target, nsamples=args.nsamples,
                        seqlen=args.seqlen, data_source=args.data_source, dtype=args.dtype, device=args.device,
                        fitness=args.fitness, fidelity=args.fidelity, last_stage=args.last_stage,
                        final_eval_windows=args.eval_windows, top_k=args.top_k,
                        rerank_final=args.rerank_final, **kw).validate()


def measure_other(session, args, kind: str, windows: int, candidates: list[dict]) -> None:
    """Add the fitness other than `kind` to each candidate (a dict with "label", "ratios" and "fitness"), at the
    search's last fidelity. Called once the search's own fitness is gone: a second KL cache of Gemma's logits
    would take 17 GB more on a GPU that jobs share."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    other = next(k for k in FITNESS_KINDS if k != kind)
    check = Fitness(session, args.metric, args.target, other, [windows])
    for c in candidates:
        c["fitness"][other] = check.measure(c["label"], c["ratios"], 0)


def write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}", flush=True)


# Run settings a variant may change from the defaults, and what its file name and report call each.
VARIANTS = (("hybrid_split", "split"), ("level_step", "step"), ("promote", "promote"),
            ("sequential_windows", "seqwin"), ("rerank_final", "rerankfinal"), ("rescore", "rescore"),
            ("refine_patience", "patience"), ("refiner", "refiner"), ("cma_sigma", "sigma"))


def _changed(a: dict) -> list[tuple[str, float | str]]:
    default = SearchConfig
    return [(name, a[key]) for key, name in VARIANTS if a.get(key, getattr(default, key)) != getattr(default, key)]


def _value(v) -> str:
    """A setting as a file name and the report show it: numbers short (0.3, 32), words as they are (cma)."""
    return v if isinstance(v, str) else f"{v:g}"


def _variant(a: dict) -> str:
    """How a run's settings differ from the defaults the equal-budget comparison uses ("" when they do not)."""
    return ("/proj" if a.get("granularity") == "projection" else "") + "".join(f"/{n} {_value(v)}"
                                                                               for n, v in _changed(a))


def cmd_refs(args) -> None:
    """The references at one target (faithful test ppl and both fitnesses), and the fitnesses' rank correlation
    with test ppl over random allocations near uniform (level switches) and random functions."""
    session, dense_ppl = open_job(args)
    cfg = search_config(args, budget_candidates=1)
    fit = Fitness(session, args.metric, args.target, args.fitness, cfg.stage_windows()[-1:], args.last_stage,
                  sequential_windows=args.sequential_windows)
    started = time.perf_counter()
    refs = comparison.references(session, cfg, fit)
    atp_s = time.perf_counter() - started
    rows = comparison.faithful_table(session, cfg, [], refs=refs)
    rng = np.random.RandomState(args.seed)
    stats = session.stats(args.metric)
    grid = LevelGrid(unit_sizes(stats.layer_shapes, "block"), args.target)
    randoms = []
    for i in range(args.random):
        if i % 2 == 0:  # an allocation: many level switches away from uniform
            levels = grid.snap(np.full(len(grid), args.target))
            for _ in range(1 + i):
                levels = grid.mutate(levels, rng)
            ratios, label = grid.ratios(levels), grid.key(levels)
        else:  # a random function
            params = {k: (d.choices[rng.randint(len(d.choices))] if hasattr(d, "choices") else
                          float(rng.uniform(d.low, d.high))) for k, d in search_space(cfg).items()}
            try:
                label = function_text(params)
                ratios = allocate(stats, label, args.target).ratios
            except DSAError:
                continue
        randoms.append({"label": label, "ratios": [float(r) for r in ratios]})
    for c in rows + randoms:
        c["fitness"] = {args.fitness: fit.measure(c["label"], c["ratios"], 0)}
    del fit
    measure_other(session, args, args.fitness, cfg.stage_windows()[-1], rows + randoms)
    for r in rows:
        print(f"{r['label']:<12}{r['ppl']:>10.3f}  ppl-fit {r['fitness']['ppl']:.4g}  kl {r['fitness']['kl']:.4g}  "
              f"{r['allocation']}", flush=True)
    candidates = [Candidate(r["label"], 0.0, r["ratios"], []) for r in randoms]
    test = comparison.faithful_table(session, cfg, candidates, refs=[])
    for r, t in zip(randoms, test):
        r["ppl"] = t["ppl"]
    corr = {}
    for k in FITNESS_KINDS:  # --random 0 (the references alone) leaves the correlation over random candidates nan
        over_random = [r["fitness"][k] for r in randoms], [r["ppl"] for r in randoms]
        corr[k] = {"random": spearmanr(*over_random).statistic if len(randoms) > 2 else math.nan,
                   "references": spearmanr([r["fitness"][k] for r in rows], [r["ppl"] for r in rows]).statistic}
        print(f"Spearman({k} fitness, test ppl): {len(randoms)} random candidates {corr[k]['random']:.3f}; "
              f"{len(rows)} references {corr[k]['references']:.3f}", flush=True)
    variant = "".join(f"{name}{_value(value)}_" for name, value in _changed(vars(args)))  # e.g. "seqwin32_"
    write(job_path(args, variant + "refs"), {"args": vars(args), "dense_ppl": dense_ppl, "rows": rows,
                                             "random": randoms, "spearman": corr, "atp_seconds": atp_s,
                                             "timings": session.timings, "environment": environment(session.lm)})


def cmd_run(args) -> None:
    """One search; its top-k re-evaluated faithfully; both fitnesses of each, for the correlation over tables."""
    session, dense_ppl = open_job(args)
    cfg = search_config(args, space=args.space, granularity=args.granularity, seed=args.seed,
                        budget_seconds=args.seconds, budget_candidates=None, rerank_tokens=args.rerank_tokens,
                        hybrid_split=args.hybrid_split, level_step=args.level_step, promote=args.promote,
                        sequential_windows=args.sequential_windows, rescore=args.rescore,
                        refine_patience=args.refine_patience, refiner=args.refiner, cma_sigma=args.cma_sigma)
    fit = search.search_fitness(session, cfg)
    log = EventLog()
    started = time.perf_counter()
    found = search.run_search(session, cfg, create_study(cfg), log, fit)
    curve: list[tuple[float, float]] = []  # (seconds, best fitness) each time the best improved
    for e in log.events:
        if not curve or e.best_fitness < curve[-1][1]:
            curve.append((e.elapsed, e.best_fitness))
    result = comparison.rerank(session, cfg, found, fit)
    search_s = time.perf_counter() - started
    print(f"{cfg.space} {args.metric} {args.target:.0%} seed {args.seed}: {result.evaluated} candidates in "
          f"{search_s:.1f} s ({result.evaluated / search_s:.2f}/s); per stage "
          + ", ".join(f"{t['tokens']} tok: {t['per_second']:.1f}/s" for t in result.throughput), flush=True)
    del fit  # the search measured its candidates at the last stage already
    rows = comparison.faithful_table(session, cfg, result.top, refs=[])
    for r, c in zip(rows, result.top):
        r.update(fitness={cfg.fitness: c.fitness}, search_fitness=c.fitness, rerank=c.rerank)
        print(f"{r['label']:<12}{r['ppl']:>10.3f}  search fitness {c.fitness:.4g}  {c.text[:90]}", flush=True)
    measure_other(session, args, cfg.fitness, cfg.stage_windows()[-1], rows)
    kind = args.space + ("_proj" if args.granularity == "projection" else "")
    kind += "".join(f"_{name}{_value(value)}" for name, value in _changed(vars(args)))
    write(job_path(args, kind, f"_s{args.seed}"), {
        "args": vars(args), "config": cfg.to_dict(), "dense_ppl": dense_ppl, "rows": rows,
        "evaluated": result.evaluated,
        "search_seconds": search_s, "throughput": result.throughput, "phases": result.phases,
        "start_ratios": result.start_ratios, "curve": curve, "timings": session.timings,
        "environment": environment(session.lm)})


def cmd_transfer(args) -> None:
    """Functions found elsewhere (other targets, other models) applied faithfully here, beside uniform and OWL."""
    session, dense_ppl = open_job(args)
    found = [json.loads(Path(p).read_text()) for p in args.sources]
    out = []
    for target in [float(t) for t in args.targets.split(",")]:
        cfg = search_config(argparse.Namespace(**{**vars(args), "target": target}), budget_candidates=1)
        texts = [(f"{model_name(argparse.Namespace(model=f['args']['model']))} {f['args']['target']:.0%}",
                  _function_of(f)) for f in found]
        texts = [(label, text) for label, text in texts if text]
        rows = comparison.faithful_table(session, cfg, [], refs=[("uniform", "uniform"), ("owl", "owl"), *texts])
        for r in rows:
            print(f"{target:.0%} {r['label']:<22}{r['ppl']:>10.3f}  {r['allocation']}", flush=True)
        out.append({"target": target, "rows": rows})
    name = "transfer_" + "_".join(Path(p).stem for p in args.sources)
    args.target = 0.0
    write(Path(args.out) / f"{model_name(args)}_{name}.json", {"args": vars(args), "dense_ppl": dense_ppl,
                                                              "tables": out})


def _function_of(record: dict) -> str | None:
    """The found function of a run: a function search's first-ranked result, or a hybrid's first phase's best."""
    if record["phases"]:
        return record["phases"][0]["best"]
    text = record["rows"][0]["allocation"]
    return text if text.startswith("W:") else None


def _setting(a: dict) -> tuple:
    """What makes a run comparable with a table of references: model, metric, target and fitness."""
    return a["model"] or "smollm2", a["metric"], a["target"], a["fitness"], a.get("last_stage", "masked")


def cmd_report(args) -> None:
    records = [json.loads(p.read_text()) | {"file": p.name} for p in sorted(Path(args.folder).glob("*.json"))]
    refs = [r for r in records if r["file"].endswith("_refs.json")]
    runs = [r for r in records if "evaluated" in r]
    for ref in refs:
        a = ref["args"]
        model, metric, target = a["model"] or "smollm2", a["metric"], a["target"]
        best_label, best = min(((r["label"], r["ppl"]) for r in ref["rows"]), key=lambda x: x[1])
        stage = a.get("last_stage", "masked")
        print(f"\n== {model}, {metric}, {target:.0%}, {a['fitness']} fitness ({stage} last stage{_variant(a)}): "
              f"WikiText-2 test ppl (faithful); best reference {best_label} {best:.2f}"
              + (f"; dense {ref['dense_ppl']:.2f}" if "dense_ppl" in ref else ""))
        print(f"{'allocation':<26}{'test ppl':>10}{'vs best ref':>13}{'fitness':>11}  {'candidates':>10}  found in")
        for r in ref["rows"]:
            print(f"{r['label'] + (' ' + r['allocation'] if r['label'] == 'atp' else ''):<26}{r['ppl']:>10.2f}"
                  f"{100 * (r['ppl'] / best - 1):>12.1f}%{r['fitness'][a['fitness']]:>11.4g}")
        mine = [r for r in runs if _setting(r["args"]) == _setting(a)]
        for r in sorted(mine, key=lambda r: (r["args"]["space"], r["args"]["seed"])):
            first = r["rows"][0]
            label = f"{r['args']['space']}{_variant(r['args'])} s{r['args']['seed']} #1"
            print(f"{label:<26}{first['ppl']:>10.2f}{100 * (first['ppl'] / best - 1):>12.1f}%"
                  f"{first['search_fitness']:>11.4g}  {r['evaluated']:>10}  {r['search_seconds']:.0f} s")
        for k, v in ref["spearman"].items():
            over_tables = [(row["fitness"][k], row["ppl"]) for row in ref["rows"]]
            over_tables += [(row["fitness"][k], row["ppl"]) for r in mine for row in r["rows"]]
            rho = spearmanr(*zip(*over_tables)).statistic if len(over_tables) > 2 else math.nan
            print(f"Spearman({k} fitness, test ppl): {len(ref['random'])} random candidates {v['random']:.3f}; "
                  f"this table's {len(over_tables)} rows {rho:.3f}")
    print("\n== throughput: candidates/s per fidelity stage (tokens: rate), and overall distinct candidates/s")
    for r in runs:
        a = r["args"]
        print(f"{(a['model'] or 'smollm2'):<14}{a['metric']:<10}{a['target']:.0%} {a['fitness']:<3} "
              f"{a['space'] + ('/proj' if a['granularity'] == 'projection' else ''):<16} s{a['seed']}  "
              + "  ".join(f"{t['tokens']}: {t['per_second']:.1f}/s" for t in r["throughput"])
              + f"  overall {r['evaluated'] / r['search_seconds']:.1f}/s")
    seeds: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in runs:
        a = r["args"]
        if not _variant(a):
            seeds.setdefault(_setting(a), {}).setdefault(a["space"], {})[a["seed"]] = r["rows"][0]["ppl"]
    for (model, metric, target, *_), spaces in seeds.items():
        if {"hybrid", "function", "allocation"} <= set(spaces) and len(spaces["hybrid"]) > 1:
            print(f"\n== equal budgets, {model} {metric} {target:.0%}: first-ranked test ppl per seed")
            common = sorted(set(spaces["hybrid"]) & set(spaces["function"]) & set(spaces["allocation"]))
            print(f"{'seed':>6}{'function':>12}{'allocation':>12}{'hybrid':>12}")
            for s in common:
                print(f"{s:>6}" + "".join(f"{spaces[k][s]:>12.2f}" for k in ("function", "allocation", "hybrid")))
            wins = sum(spaces["hybrid"][s] < min(spaces["function"][s], spaces["allocation"][s]) for s in common)
            print(f"hybrid beats both on {wins} of {len(common)} seeds")
    for r in records:
        if "tables" in r:
            print(f"\n== transfer to {r['args']['model'] or 'smollm2'} ({r['file']})")
            for t in r["tables"]:
                print(f"{t['target']:.0%}: " + "; ".join(f"{row['label']} {row['ppl']:.2f}" for row in t["rows"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("refs", "run", "transfer"):
        p = sub.add_parser(name)
        add_setup_options(p)
        p.add_argument("--metric", default="wanda")
        p.add_argument("--target", type=float, default=0.7)
        p.add_argument("--fitness", default="kl", choices=FITNESS_KINDS)
        p.add_argument("--fidelity", default="2k,16k,64k")
        p.add_argument("--last-stage", default="masked", choices=tuple(LAST_STAGES))
        p.add_argument("--top-k", type=int, default=3)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True)
        p.add_argument("--random", type=int, default=8, help="refs: random candidates for the correlation")
        p.add_argument("--sequential-windows", type=int, default=SearchConfig.sequential_windows,
                       help="a sequential last stage calibrates on the first this many windows (0: all)")
        p.add_argument("--rerank-final", action="store_true",
                       help="re-rank the top-k (and ATP's best k values of β) by the fitness after the final pruning")
    run = sub.choices["run"]
    run.add_argument("--space", default="hybrid", choices=tuple(SPACES))
    run.add_argument("--granularity", default="block", choices=GRANULARITIES)
    run.add_argument("--seconds", type=float, default=120.0)
    run.add_argument("--rerank-tokens", type=int, default=0)
    run.add_argument("--hybrid-split", type=float, default=SearchConfig.hybrid_split,
                     help="hybrid: share of the time spent on functions")
    run.add_argument("--level-step", type=float, default=SearchConfig.level_step,
                     help="allocation and hybrid: a level switch moves this fraction of the smallest unit's weights")
    run.add_argument("--promote", type=int, default=SearchConfig.promote,
                     help="staged selection: 1 in this many candidates goes on to the next fidelity")
    run.add_argument("--rescore", action="store_true",
                     help="the re-masked stages score on the best sequentially pruned candidate's inputs")
    run.add_argument("--refine-patience", type=int, default=SearchConfig.refine_patience,
                     help="hybrid: restart the refinement from a distant start after this many candidates at the "
                          "last stage without a better one (0: never)")
    run.add_argument("--refiner", default=SearchConfig.refiner, choices=tuple(REFINERS),
                     help="allocation and hybrid spaces: " + "; ".join(f"{k}: {v}" for k, v in REFINERS.items()))
    run.add_argument("--cma-sigma", type=float, default=SearchConfig.cma_sigma,
                     help="--refiner cma: the first standard deviation of each unit's move, in level steps")
    sub.choices["transfer"].add_argument("--from", dest="sources", nargs="+", required=True)
    sub.choices["transfer"].add_argument("--targets", default="0.6,0.8")
    sub.add_parser("report").add_argument("folder")
    args = ap.parse_args()
    {"refs": cmd_refs, "run": cmd_run, "transfer": cmd_transfer, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
