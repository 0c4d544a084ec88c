"""How fast the web app's formula builder redraws a profile from cached scores, and what loading costs first.

    python bench/bench_app.py                                   # SmolLM2 on CUDA when present, else CPU
    python bench/bench_app.py --model random:tiny --repeats 50  # quick check
    python bench/bench_app.py --http                            # also through the app's HTTP API (gradio_client)

Prints a table: load + scoring once, then per profile redraw (median, 90th percentile, max over random functions
drawn from the search space): the allocation of the function and of the references, the Plotly figure with its
JSON (what Gradio sends), and with --http the whole round trip of the /profile endpoint.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsa_core import functions  # noqa: E402
from dsa_core.config import EvalConfig  # noqa: E402
from dsa_core.errors import DSAError  # noqa: E402
from ui import figures  # noqa: E402
from ui.formula import controls_from_function  # noqa: E402
from ui.jobs import Job  # noqa: E402
from ui.workspace import Workspace  # noqa: E402


def random_functions(n: int, seed: int) -> list[functions.AllocationFunction]:
    rng = random.Random(seed)
    slots = functions.slot_choices()
    return [functions.function_from_slots({k: rng.choice(v) for k, v in slots.items()},
                                          lam=round(rng.uniform(0.02, 0.3), 2))
            for _ in range(n)]


def summary(ms: list[float]) -> str:
    ordered = sorted(ms)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{statistics.median(ms):9.1f} {p90:9.1f} {max(ms):9.1f}"


def time_http(ws: Workspace, fns: list[functions.AllocationFunction], target: float) -> list[float]:
    from gradio_client import Client

    from storage import History, open_database
    from ui.app import build_app

    with tempfile.TemporaryDirectory() as folder, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        demo = build_app(ws, History(open_database(f"sqlite:///{folder}/history.db")))
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(url, verbose=False)
            out = []
            for fn in fns:
                start = time.perf_counter()
                client.predict(*controls_from_function(fn).values(), target, api_name="/profile")
                out.append(1000 * (time.perf_counter() - start))
            return out
        finally:
            demo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default=None)
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--repeats", type=int, default=30, help="random functions timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--http", action="store_true", help="also time the /profile endpoint of a launched app")
    args = ap.parse_args()

    ws = Workspace(args.device)
    start = time.perf_counter()
    ws.load(EvalConfig(model=args.model, metric=args.metric, nsamples=args.nsamples, seqlen=args.seqlen), Job("load"))
    load_s = time.perf_counter() - start
    fns = random_functions(args.repeats, args.seed)
    ws.references(args.target)  # computed once per target; a redraw after that reuses them

    alloc_ms, figure_ms, failed = [], [], 0
    for fn in fns:
        start = time.perf_counter()
        try:
            profiles = ws.profiles(fn, args.target)
        except DSAError:
            failed += 1
            continue
        mid = time.perf_counter()
        json.dumps(figures.profile_figure(profiles.ratios, args.target).to_plotly_json(), default=str)
        alloc_ms.append(1000 * (mid - start))
        figure_ms.append(1000 * (time.perf_counter() - mid))

    blocks = len(ws.stats.params)
    print(f"model {args.model} ({blocks} blocks) on {ws.device}; {args.nsamples}×{args.seqlen} calibration; "
          f"{len(alloc_ms)} functions at target {args.target} ({failed} refused)")
    print(f"load + scoring (once)          {load_s:9.1f} s   phases: " +
          ", ".join(f"{k} {v:.1f} s" for k, v in ws.session.timings.items()))
    print(f"{'per redraw, ms':<30} {'median':>9} {'p90':>9} {'max':>9}")
    print(f"{'allocation (function + refs)':<30} {summary(alloc_ms)}")
    print(f"{'Plotly figure + JSON':<30} {summary(figure_ms)}")
    print(f"{'total in process':<30} {summary([a + b for a, b in zip(alloc_ms, figure_ms)])}")
    if args.http:
        print(f"{'HTTP /profile round trip':<30} {summary(time_http(ws, fns, args.target))}")


if __name__ == "__main__":
    main()
