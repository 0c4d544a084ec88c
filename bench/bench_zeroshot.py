"""Zero-shot accuracy (lm-evaluation-harness scoring) of SmolLM2: dense, then uniform, OWL and the DSA preset at
one sparsity, each pruned from the same dense weights and calibration windows, and how long each scoring took.

    python bench/bench_zeroshot.py                  # GPU: full PIQA validation, 50%, 128×2048 calibration
    python bench/bench_zeroshot.py --device cpu --limit 200 --nsamples 16 --seqlen 512   # CPU quick run
    python bench/bench_zeroshot.py --tasks paper --tasks-data DIR   # the papers' seven, from their release files

Prints one row per allocation and task (acc, acc_norm, n, seconds of scoring), then the tasks side by side.
The seconds count scoring only (lm-eval's requests, batched forwards, metrics), not loading or pruning.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsa_core.config import EvalConfig  # noqa: E402
from dsa_core.pipeline import environment, open_session  # noqa: E402
from dsa_core.zeroshot.compare import REFERENCES, compare_allocations  # noqa: E402
from dsa_core.zeroshot.report import format_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--tasks", default="piqa")
    ap.add_argument("--limit", type=int, default=None, help="examples per task (default: the whole split)")
    ap.add_argument("--tasks-data", default=None)
    ap.add_argument("--data-source", default="auto")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--allocations", default=",".join(label for label, _ in REFERENCES),
                    help=f"labels among {', '.join(label for label, _ in REFERENCES)}")
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--mode", default="sequential")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=None, help="zero-shot batch (default 64 on GPU, 8 on CPU)")
    args = ap.parse_args()

    cfg = EvalConfig(model=args.model, device=args.device, dtype=args.dtype, sparsity=args.sparsity,
                     metric=args.metric, mode=args.mode, nsamples=args.nsamples, seqlen=args.seqlen,
                     data_source=args.data_source, tasks=args.tasks, tasks_limit=args.limit,
                     tasks_data=args.tasks_data).validate()
    wanted = [a.strip() for a in args.allocations.split(",") if a.strip()]
    unknown = set(wanted) - {label for label, _ in REFERENCES}
    if unknown:
        ap.error(f"unknown allocations {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    session = open_session(cfg)
    env = environment(session.lm)
    print(f"# {env.get('device') or session.lm.device} | {env['dtype']} | torch {env['torch']} | "
          f"transformers {env['transformers']} | model {cfg.model or 'smollm2'} | {cfg.metric} {cfg.mode} @ "
          f"{cfg.sparsity:.0%}, calibration {cfg.nsamples}×{cfg.seqlen} | load {session.timings['load']:.1f} s",
          flush=True)
    print(f"{'allocation':<12} {'task':<14} {'acc':>6} {'acc_norm':>8} {'n':>6} {'seconds':>8}", flush=True)

    def row(label: str, result: dict) -> None:
        for name, t in result["tasks"].items():
            norm = "-" if t["acc_norm"] is None else f"{t['acc_norm']:.4f}"
            print(f"{label:<12} {name:<14} {t['acc']:6.4f} {norm:>8} {t['n']:6d} {result['seconds']:8.2f}",
                  flush=True)

    results = compare_allocations(session, cfg, references=[r for r in REFERENCES if r[0] in wanted],
                                  batch_size=args.batch_size, on_result=row)
    print()
    print(format_table(results))
    first = next(iter(results.values()))["protocol"]
    print(f"# {first['harness']}, zero-shot, batch {first['batch_size']}, data {first['source']}; "
          f"sources: {', '.join(sorted({t['source'] for r in results.values() for t in r['tasks'].values()}))}")
    print("# seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in session.timings.items())
          + f", total {time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
