"""Command line: `python -m dsa_core evaluate ...` (and the search and export commands of cli.search
and cli.export).

Parses options into the same config objects the web app uses, runs them, records them in the web app's history
(storage.recorder: --history URL, --no-history), prints a table or one JSON object. Errors the engine raises on
purpose print as one sentence with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.export import add_export_parser, export_command
from cli.options import add_options, values
from cli.output import print_result
from cli.progress import TerminalReporter
from cli.search import INTERRUPTED, add_search_parsers, search_command, worker_command
from cli.structural import add_structural_parser, structural_command
from dsa_core.config import EvalConfig
from dsa_core.errors import DSAError
from storage.recorder import add_history_options, recorder_from_args

if TYPE_CHECKING:  # imported when the command runs: `--help` answers without loading torch
    from dsa_core.pipeline import Evaluation


def build_parser() -> argparse.ArgumentParser:
    # Installed (`pip install .`), the same commands are the console command `sparsity-explorer`.
    prog = "sparsity-explorer" if Path(sys.argv[0]).name == "sparsity-explorer" else "python -m dsa_core"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="prune with one allocation and report WikiText-2 perplexity")
    add_options(ev, EvalConfig)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    add_history_options(ev)
    add_search_parsers(sub)
    add_export_parser(sub)
    add_structural_parser(sub)
    return parser


def _print_table(result: dict) -> None:
    cfg = result["config"]
    print(f"model {cfg['model'] or 'smollm2'} | {cfg['metric']} | {cfg['allocation']} @ {cfg['sparsity']:.0%} "
          f"{cfg['pattern']} | {cfg['mode']}")
    if "dense_ppl" in result:
        print(f"dense perplexity    {result['dense_ppl']:.3f}")
    print(f"perplexity          {result['ppl']:.3f}")
    print(f"achieved sparsity   {result['achieved_sparsity']:.4f}")
    print("ratios              " + " ".join(f"{r:.3f}" for r in result["ratios"]))
    for w in result["warnings"]:
        print(f"warning: {w}")
    p = result["protocol"]
    print(f"protocol            {p['dataset']}/{p['split']} ({p['source']}), seqlen {p['seqlen']}, "
          f"{p['windows']} windows; calibration {p['nsamples']}×{p['seqlen']} from {p['calibration_source']}, "
          f"seed {p['seed']}")
    print("seconds             " + ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items()))
    if "history_id" in result:
        print(f"history id          {result['history_id']}")
    if "zeroshot" in result:
        from dsa_core.zeroshot.report import format_table

        columns = {"dense": result["dense_zeroshot"]} if "dense_zeroshot" in result else {}
        columns[cfg["allocation"]] = result["zeroshot"]
        print(f"zero-shot           {result['zeroshot']['protocol']['harness']}, n = examples scored per task")
        print(format_table(columns))


def recorded_evaluation(result: Evaluation) -> dict:
    """What an evaluation of one allocation keeps in the history, in the shape the web app's evaluations have (one
    row, labelled by its allocation): results, protocol and environment, for Run.done."""
    cfg = result.config
    row = {"label": cfg["allocation"], "allocation": cfg["allocation"], "ppl": result.ppl, "ratios": result.ratios,
           "achieved_sparsity": result.achieved_sparsity, "warnings": result.warnings,
           **({"zeroshot": result.zeroshot} if result.zeroshot else {})}
    kept = {k: v for k, v in (("dense_ppl", result.dense_ppl), ("dense_zeroshot", result.dense_zeroshot)) if v}
    return {"results": {"target": cfg["sparsity"], "mode": cfg["mode"], "rows": [row], **kept,
                        "timings": result.timings},
            "protocol": result.protocol, "environment": result.environment}


def evaluate_command(args: argparse.Namespace) -> int:
    from dsa_core.pipeline import run_evaluation

    cfg = EvalConfig(**values(args, EvalConfig)).validate()
    with recorder_from_args(args).run("evaluation", cfg.to_dict()) as run:
        result = run_evaluation(cfg, None if args.json else TerminalReporter())
        run.done(**recorded_evaluation(result))
    print_result(result.to_dict(), run, args.json, _print_table)
    return 0


COMMANDS = {"evaluate": evaluate_command, "search": search_command, "worker": worker_command,
            "export": export_command, "structural": structural_command}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except DSAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a search (which stops itself: cli.search): one line, the shell's code
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
