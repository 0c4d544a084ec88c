"""The function search alone (DSA's space, the proxy-perplexity fitness of one stage) on a real model: candidates
per second, time to beat OWL, and the final faithful table; the
genetic sampler against random search on several seeds; the fast proxy's rank correlation with the faithful
protocol.

    python bench/bench_function_search.py --targets 0.7 --seconds 120                 # GPU: search + final table
    python bench/bench_function_search.py --targets 0.7 --compare-seeds 0,1,2 --compare-candidates 300 --no-search \
        --variants ga,nsga2                                                  # samplers vs random
    python bench/bench_function_search.py --nsamples 4 --seqlen 256 --fitness-windows 2 --final-eval-windows 4 \
        --seconds 30 --targets 0.6                                           # CPU smoke run

Everything in one process and on the same calibration windows, so the rows of a table are comparable.
Searched functions are fitted on WikiText-2 validation (the proxy) and reported on the test split.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.options import add_options  # noqa: E402
from dsa_core import (
    comparison,  # noqa: E402
    search,  # noqa: E402
)
from dsa_core.config import EvalConfig  # noqa: E402
from dsa_core.fitness import Fitness  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402
from dsa_core.reporter import EventLog  # noqa: E402
from dsa_core.search_config import SearchConfig  # noqa: E402
from dsa_core.studies import create_study  # noqa: E402


def search_once(session, base: dict, target: float, sampler: str, seed: int, seconds: float | None,
                candidates: int | None, owl_proxy: float):
    cfg = SearchConfig(**base, sparsity=target, sampler=sampler, seed=seed, budget_seconds=seconds,
                       budget_candidates=candidates).validate()
    beat_owl: list[float] = []
    evaluated_at: list[float] = []  # seconds into the search at which each new candidate's fitness came

    log = EventLog()
    start = time.perf_counter()
    result = search.run_search(session, cfg, create_study(cfg), log)
    for e in log.events:
        if not e.cached:
            evaluated_at.append(e.elapsed)
        if not beat_owl and e.best_fitness < owl_proxy:
            beat_owl.append(e.elapsed)
    seconds = time.perf_counter() - start
    # Candidates/s in each quarter of the search: breeding is slowest early, while (pre-process, reduction) pairs
    # are new to the memo, so one overall rate hides where the time went.
    counts, _ = np.histogram(evaluated_at, bins=4, range=(0.0, seconds))
    quarters = counts / (seconds / 4)
    return cfg, result, seconds, (beat_owl[0] if beat_owl else math.nan), quarters


def proxy_of(session, cfg: SearchConfig, spec: str) -> float:
    """The search's fitness (fast proxy) of any allocation: a baseline name or a function's text form."""
    value = Fitness(session, cfg.metric, cfg.sparsity, "ppl", cfg.stage_windows())(spec)
    session.restore()
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--fitness-windows", type=int, default=8)
    ap.add_argument("--final-eval-windows", type=int, default=None)
    ap.add_argument("--targets", default="0.6,0.7")
    ap.add_argument("--seconds", type=float, default=120.0, help="search budget per target")
    ap.add_argument("--population", type=int, default=24)
    ap.add_argument("--mutation", type=float, default=None, help="GA per-gene mutation probability")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--compare-seeds", default="", help="seeds for GA vs random at the first target")
    ap.add_argument("--compare-candidates", type=int, default=300)
    ap.add_argument("--variants", default="ga,nsga2",
                    help="samplers to compare with random, each with optional settings, e.g. "
                         "'ga,ga:population=12:initial=60,nsga2:population=64:mutation=0.3'")
    add_options(ap, EvalConfig, ("dtype",))
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    session = open_session(EvalConfig(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen,
                                      dtype=args.dtype, data_source="local"))
    base = dict(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen, data_source="local",
                population=args.population, mutation=args.mutation, fitness_windows=args.fitness_windows,
                top_k=args.top_k,
                final_eval_windows=args.final_eval_windows)
    session.scores("wanda")
    dev = session.lm.device
    print(f"model {args.model or 'smollm2'} on {dev} {session.lm.dtype}; calibration {args.nsamples}x{args.seqlen} "
          f"from {session.calib_origin}; proxy = {args.fitness_windows} WikiText-2 validation windows; final = "
          f"sequential Wanda, WikiText-2 test ({args.final_eval_windows or 'all'} windows)", flush=True)

    targets = [float(t) for t in args.targets.split(",") if t]
    for target in targets if not args.no_search else []:
        probe = SearchConfig(**base, sparsity=target, budget_candidates=1).validate()
        owl_proxy = proxy_of(session, probe, "owl")
        cfg, result, seconds, beat, quarters = search_once(session, base, target, "ga", args.seed, args.seconds, None,
                                                           owl_proxy)
        print(f"\n{target:.0%}: {result.evaluated} candidates in {seconds:.1f} s ({result.evaluated / seconds:.2f}/s); "
              f"candidates/s by quarter of the search: {' / '.join(f'{q:.2f}' for q in quarters)}", flush=True)
        t = time.perf_counter()
        refs = [("uniform", "uniform"), ("owl", "owl"), ("dsa preset", search.F.to_text(search.F.DSA_PRESET))]
        table = comparison.faithful_table(session, cfg, [c.text for c in result.top], refs=refs)
        final_s = time.perf_counter() - t
        proxies = [proxy_of(session, probe, r["allocation"]) for r in table]
        best_baseline = min(r["ppl"] for r in table if not r["label"].startswith("searched"))
        best_searched = min(r["ppl"] for r in table if r["label"].startswith("searched"))
        rho = spearmanr(proxies, [r["ppl"] for r in table]).statistic
        print(f"\n== target {target:.0%}: {result.evaluated} candidates in {seconds:.1f} s "
              f"({result.evaluated / seconds:.2f}/s); best proxy beat OWL's ({owl_proxy:.3f}) after {beat:.1f} s; "
              f"final table {final_s:.1f} s")
        print(f"{'allocation':<14}{'test ppl':>12}{'proxy':>12}  function")
        for r, p in zip(table, proxies):
            print(f"{r['label']:<14}{r['ppl']:>12.3f}{p:>12.3f}  {r['allocation']}")
        print(f"searched vs best baseline: {100 * (1 - best_searched / best_baseline):.1f}% lower test ppl; "
              f"Spearman(proxy, test ppl) over these {len(table)} rows = {rho:.3f}", flush=True)

    seeds = [int(s) for s in args.compare_seeds.split(",") if s]
    if seeds:
        compare(session, base, targets[0], seeds, args.compare_candidates, args.variants)


def parse_variants(spec: str) -> list[tuple[str, dict]]:
    """'ga,nsga2:population=64:mutation=0.3' → [(label, SearchConfig overrides), ...]."""
    out = []
    for item in (v for v in spec.split(",") if v):
        sampler, *settings = item.split(":")
        kw = {"sampler": sampler}
        for setting in settings:
            name, _, value = setting.partition("=")
            kw[name] = float(value) if name == "mutation" else int(value)
        out.append((item, kw))
    return out


def compare(session, base: dict, target: float, seeds: list[int], candidates: int, variants: str) -> None:
    """Best proxy after the same number of distinct candidates: each sampler variant against random search."""
    probe = SearchConfig(**base, sparsity=target, budget_candidates=1).validate()
    owl_proxy = proxy_of(session, probe, "owl")
    specs = parse_variants(variants) + [("random", {"sampler": "random"})]
    width = max(12, *(len(label) + 2 for label, _ in specs))
    print(f"\n== samplers vs random search at {target:.0%}, {candidates} distinct candidates each; proxy ppl of the "
          f"best (OWL's proxy {owl_proxy:.3f})")
    print(f"{'seed':>6}" + "".join(f"{label:>{width}}" for label, _ in specs))
    rows, seconds = [], []
    for seed in seeds:
        row, secs = [], []
        for _, kw in specs:
            overrides = {k: v for k, v in kw.items() if k != "sampler"}
            _, result, s, _, _ = search_once(session, {**base, **overrides}, target, kw["sampler"], seed, None,
                                          candidates, owl_proxy)
            row.append(result.best.fitness)
            secs.append(s)
        seconds.append(secs)
        rows.append(row)
        print(f"{seed:>6}" + "".join(f"{v:>{width}.3f}" for v in row), flush=True)
    means = np.mean(rows, axis=0)
    print(f"{'mean':>6}" + "".join(f"{v:>{width}.3f}" for v in means))
    print(f"{'s/run':>6}" + "".join(f"{v:>{width}.1f}" for v in np.mean(seconds, axis=0)))
    for i, (label, _) in enumerate(specs[:-1]):
        print(f"{label}: better than random on {sum(r[i] < r[-1] for r in rows)}/{len(rows)} seeds, mean "
              f"{means[i]:.3f} vs {means[-1]:.3f}")


if __name__ == "__main__":
    main()
