"""Command line of structural pruning: `python -m dsa_core structural --target-ratio 0.7 --steps N ...`.

Trains DISP-LLM's hypernetwork, builds the compressed model (optionally saved with save_pretrained),
measures it against the dense model and the baselines asked for (--baselines: the uniform-width one by activation
norms, the same hypernetwork with uniform widths, ShortGPT) at the same parameter count, prints a table or one JSON
object, and records the run in the experiment history (--history URL, --no-history; storage.recorder). A thin wrapper
over dsa_core.structural.runner.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cli.options import add_options, values
from cli.output import print_result
from cli.progress import TerminalReporter
from dsa_core.errors import ConfigError
from dsa_core.settings import setting
from dsa_core.structural.training import CPU_DEFAULTS, EXTRA_BASELINES, StructuralConfig
from storage.recorder import add_history_options, recorder_from_args


def _sized(name: str) -> dict:
    """An option whose default depends on the device: None on the command line (config_from_args fills it in),
    both defaults in its help."""
    f = setting(StructuralConfig, name)
    general = "all" if f.default is None else f.default
    return {"default": None, "help": f"{f.metadata['help']} (default {general}; on a CPU {CPU_DEFAULTS[name]})"}


def add_structural_parser(sub) -> None:
    p = sub.add_parser("structural", help="DISP-LLM structural pruning: train, compress, compare with a baseline")
    add_options(p, StructuralConfig, **{name: _sized(name) for name in CPU_DEFAULTS})
    p.add_argument("--baselines", default="uniform", metavar="NAMES",
                   help="comma-separated baselines at the same parameter count: uniform (uniform widths by activation "
                   "norms, untrained), " + ", ".join(f"{k} ({v})" for k, v in EXTRA_BASELINES.items())
                   + "; 'none' for none (default: uniform)")
    p.add_argument("--no-baseline", action="store_true", help="no baseline at all (as --baselines none)")
    p.add_argument("--save", default=None, metavar="DIR", help="save the compressed model here (save_pretrained)")
    add_history_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def baselines_from_args(args: argparse.Namespace) -> tuple[bool, list[str]]:
    """--baselines as the config holds it: whether to measure the uniform baseline, and the others' names."""
    names = [n.strip().lower() for n in args.baselines.split(",") if n.strip()]
    if args.no_baseline or names == ["none"]:
        return False, []
    unknown = [n for n in names if n != "uniform" and n not in EXTRA_BASELINES]
    if unknown:
        raise ConfigError(f"Unknown baseline '{unknown[0]}'; choose among uniform, {', '.join(EXTRA_BASELINES)} "
                          "or none.")
    return "uniform" in names, [n for n in EXTRA_BASELINES if n in names]


def config_from_args(args: argparse.Namespace) -> StructuralConfig:
    uniform, extra = baselines_from_args(args)
    given = {k: v for k, v in values(args, StructuralConfig).items() if v is not None or k not in CPU_DEFAULTS}
    if given.get("eval_windows") == 0:
        given["eval_windows"] = None  # the whole test split
    return StructuralConfig.defaults_for(given.pop("device"), baseline=uniform, extra_baselines=extra,
                                         **given).validate()


def print_table(result: dict) -> None:
    from dsa_core.structural.runner import TITLES

    cfg, params, ppl = result["config"], result["params"], result["ppl"]
    print(f"model {cfg['model'] or 'smollm2'} | DISP-LLM | target {cfg['target_ratio']:.0%} of block linear "
          f"parameters | {len(result['curve'])} steps × {cfg['batch_size']}×{cfg['seqlen']}")
    print(f"kept parameters     {params['kept_block_linear']:,} of {params['dense_block_linear']:,} "
          f"({params['ratio']:.4f}; target {params['target_block_linear']:,}; hypernetwork alone "
          f"{params['hypernetwork_ratio']:.4f})")
    print(f"model parameters    {params['compressed_total']:,} of {params['dense_total']:,} (with embeddings)")
    print(f"{'':20}{'perplexity':>12}{'kept':>9}")
    kept = {"dense": 1.0, "compressed": params["ratio"], "baseline": result.get("baseline", {}).get("ratio")}
    for label, key in (("dense", "dense"), ("DISP-LLM", "compressed"), ("uniform baseline", "baseline")):
        if key in ppl:
            print(f"{label:<20}{ppl[key]:>12.3f}{kept[key]:>9.2%}")
    for name, row in result.get("baselines", {}).items():
        print(f"{TITLES[name]:<20}{row['ppl']:>12.3f}{row['ratio']:>9.2%}")
        if name == "shortgpt":
            print(f"{'':20}removed blocks {row['removed']}")
    widths = np.array(result["selection"]["widths"])
    print(f"{'widths':<20}{'min':>8}{'mean':>8}{'max':>8}{'full':>8}")
    for j, label in enumerate(result["structure_labels"]):
        col = widths[:, j]
        print(f"{label:<20}{col.min():>8}{col.mean():>8.0f}{col.max():>8}{result['full_widths'][j]:>8}")
    p = result["protocol"]
    print(f"protocol            {p['dataset']}/{p['split']} ({p['source']}), seqlen {p['seqlen']}, "
          f"{p['windows']} windows; calibration {p['calibration_source']}")
    print("seconds             " + ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items()))
    if result.get("estimate"):
        print(f"estimated seconds   {result['estimate']['seconds_left']:.0f} after the first step; took "
              f"{sum(v for k, v in result['timings'].items() if k not in ('load', 'data')):.0f}")
    if "saved_to" in result:
        print(f"saved to            {result['saved_to']}")
    if "history_id" in result:
        print(f"history id          {result['history_id']}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")


class TrainingReporter(TerminalReporter):
    """Bars per phase (unless `quiet`), the first estimate of the time left said once (after the second step,
    before the bulk of the training), and the training curve kept for the history if the run fails."""

    def __init__(self, quiet: bool):
        super().__init__(bars=not quiet)
        self.quiet, self.told, self.curve = quiet, False, []

    def on_time_left(self, seconds: float, how: str) -> None:
        if not self.told and not self.quiet:
            print(f"estimated: {how}", file=sys.stderr)
        self.told = True

    def on_event(self, point: dict) -> None:
        self.curve.append(point)


def structural_command(args: argparse.Namespace) -> int:
    from dsa_core.structural.runner import default_name, run_structural, stored_results

    cfg = config_from_args(args)
    reporter = TrainingReporter(quiet=args.json)
    with recorder_from_args(args).run("structural", cfg.to_dict(), name=default_name(cfg.to_dict())) as recorded:
        try:
            run = run_structural(cfg, reporter, save_dir=args.save)
        except BaseException as e:
            recorded.fail(e, {"curve": reporter.curve})  # the training curve so far is kept
            raise
        result = run.result
        recorded.done(stored_results(result), protocol=result["protocol"], environment=result["environment"])
    print_result(result, recorded, args.json, print_table)
    return 0
