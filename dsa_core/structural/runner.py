"""One structural-pruning run end to end: load → train the hypernetwork → compress → the uniform-width
baseline at the same budget (and, when asked, the stronger baselines of `training.EXTRA_BASELINES`: the same
hypernetwork with uniform widths, ShortGPT) → WikiText-2 test perplexity of dense, compressed and baseline models, as
a result dictionary that carries its protocol, timings and environment. The CLI prints it, the web app plots
it, storage keeps it. Orchestration only: each step is a call into the modules of its stage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from dsa_core import data
from dsa_core.evaluate import default_batch_size, perplexity
from dsa_core.models import LoadedModel, load_model
from dsa_core.pipeline import environment, oom_as_error, peak_memory_gb
from dsa_core.reporter import Reporter, reporter_or_silent
from dsa_core.structural.baseline import block_influence, blocks_to_remove, remove_blocks, uniform_selection
from dsa_core.structural.compressed import as_loaded, compress
from dsa_core.structural.estimate import RunEstimate, convergence_warnings
from dsa_core.structural.layouts import Shared
from dsa_core.structural.selection import LABELS, STRUCTURES, BlockShape, Selection
from dsa_core.structural.training import EXTRA_BASELINES, Progress, StructuralConfig, train_selection

log = logging.getLogger(__name__)


@dataclass
class StructuralRun:
    """The result dictionary (its stable serialised form) and the models behind it (for saving and speed
    measurements)."""

    kind: ClassVar[str] = "structural"
    result: dict
    dense: LoadedModel
    compressed: nn.Module
    selection: Selection
    baseline: nn.Module | None = None
    hypernetwork: nn.Module | None = None  # the trained generator: its scores give other fits of the budget

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.result}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights count once


def _selection_summary(selection: Selection) -> dict:
    return {
        "widths": selection.widths.tolist(),
        "params": selection.params,
        "ratio": selection.ratio,
    }


# What the history keeps as an experiment's results; config, protocol and environment go in their own fields.
RESULT_KEYS = ("ppl", "params", "selection", "baseline", "baselines", "curve", "structures", "structure_labels",
               "full_widths", "saved_to", "timings", "estimate", "warnings", "peak_memory_gb")


def stored_results(result: dict) -> dict:
    return {k: result[k] for k in RESULT_KEYS if k in result}


def default_name(cfg: dict) -> str:
    """The history's name for a run its user did not name."""
    heads = ", heads too" if cfg.get("prune_heads") else ""
    return f"DISP-LLM {cfg['target_ratio']:.0%} of {cfg['model'] or 'smollm2'}, {cfg['steps']} steps{heads}"


def _uniform_hypernetwork(lm: LoadedModel, ids: torch.Tensor, windows: torch.Tensor, cfg: StructuralConfig,
                          batch_size: int, progress: Progress | None) -> tuple[nn.Module, int, dict]:
    """The same hypernetwork with one hidden selection and one intermediate width for every block, trained the same
    steps on the same text: what DISP-LLM's dimension independence buys."""
    trained = train_selection(lm, ids, cfg, progress, layout=Shared)
    return (compress(lm, trained.selection), trained.selection.params,
            {"widths": trained.selection.widths[0].tolist(), "steps": len(trained.curve)})


def _shortgpt(lm: LoadedModel, ids: torch.Tensor, windows: torch.Tensor, cfg: StructuralConfig, batch_size: int,
              progress: Progress | None) -> tuple[nn.Module, int, dict]:
    """ShortGPT: the blocks of least Block Influence on the calibration windows removed, as many as the budget says."""
    influence = block_influence(lm, windows, batch_size)
    drop = blocks_to_remove(influence, cfg.target_ratio)
    shape = BlockShape.from_config(lm.model.config)  # every block holds the same parameters
    kept = shape.dense_params // shape.n_blocks * (shape.n_blocks - len(drop))
    return remove_blocks(lm, drop), kept, {"removed": drop, "influence": influence.tolist()}


BUILDERS = {"hypernet": _uniform_hypernetwork, "shortgpt": _shortgpt}
TITLES = {"hypernet": "uniform hypernet", "shortgpt": "ShortGPT"}  # short names for tables


def run_structural(cfg: StructuralConfig, reporter: Reporter | None = None, lm: LoadedModel | None = None,
                   save_dir: str | Path | None = None) -> StructuralRun:
    """Run cfg; reuse `lm` when given (it must be the model cfg names). Saves the compressed model (and
    the tokenizer) to `save_dir` when given. The reporter hears the progress of every phase, each training step's
    point (`event`: step, seconds, loss, kept ratio) and, from the second step (before the bulk of the training), the
    time left with what it is made of (`time_left`); cancelling it stops the run. Warnings say when training did not
    converge."""
    cfg.validate()
    reporter = reporter_or_silent(reporter)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        if lm is not None and lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - clock
        clock = time.perf_counter()

    if lm is None:
        with oom_as_error("loading the model"):
            lm = load_model(cfg.model, cfg.device, cfg.dtype)
        lap("load")
    calib = data.load_text(cfg.calib, "train", cfg.data_source)
    ids = data.tokenize(lm.tokenizer, calib.text)
    test = data.load_text("wikitext2", "test", cfg.data_source)
    windows = data.eval_windows(data.tokenize(lm.tokenizer, test.text), cfg.eval_seqlen, cfg.eval_windows,
                                bos_id=lm.window_bos)
    lap("data")
    extra = cfg.extra_baselines
    calib_passes = cfg.baseline + ("shortgpt" in extra)  # the uniform baseline's norms, ShortGPT's influence
    eval_tokens = windows.numel() * (2 + cfg.baseline + len(extra)) + calib_passes * cfg.baseline_samples * cfg.seqlen
    more_steps = cfg.steps if "hypernet" in extra else 0  # the uniform hypernetwork trains as long
    estimates: list[RunEstimate] = []
    first_step: list[float] = []

    def step_done(point: dict) -> None:
        # The first step warms up (SmolLM2 on a CPU: 34 s, then 13 s a step), so the rate comes from the steps after
        # it, and the first estimate from the second step (or the only one).
        step, seconds = point["step"], point["seconds"]
        if step == 1:
            first_step.append(seconds)
        if step >= min(2, cfg.steps):
            rate = seconds if step == 1 else (seconds - first_step[0]) / (step - 1)
            limit = cfg.max_train_seconds
            cap = None if limit is None else limit - seconds + (limit if more_steps else 0)
            estimate = RunEstimate(rate, cfg.steps - step + more_steps, eval_tokens, cfg.batch_size * cfg.seqlen, cap)
            if not estimates:
                log.info("structural pruning: %s", estimate.describe())
                estimates.append(estimate)
            reporter.time_left(estimate.seconds_left, estimate.describe())
        reporter.event(point)

    with oom_as_error("training the hypernetwork"):
        trained = train_selection(lm, ids, cfg, reporter, step_done)
    lap("training")
    compressed = compress(lm, trained.selection)
    lap("compression")

    bs = default_batch_size(lm.device)

    def ppl(model: LoadedModel, phase: str) -> float:
        with oom_as_error("measuring perplexity"):
            return perplexity(model, windows, bs, lambda d, t: reporter(phase, d, t))

    result: dict = {"config": cfg.to_dict(), "structures": list(STRUCTURES),
                    "structure_labels": [LABELS[s] for s in STRUCTURES],
                    "full_widths": trained.selection.shape.full_widths}
    result["ppl"] = {"dense": ppl(lm, "perplexity (dense)"),
                     "compressed": ppl(as_loaded(compressed, lm, "compressed"), "perplexity (compressed)")}
    lap("perplexity")
    baseline = None
    calib_windows = data.calibration_windows(ids, cfg.baseline_samples, cfg.seqlen, cfg.seed, lm.window_bos)
    if cfg.baseline:
        with oom_as_error("choosing the baseline's channels"):
            base_sel = uniform_selection(lm, calib_windows, cfg.target_ratio, bs, cfg.align)
        baseline = compress(lm, base_sel)
        result["baseline"] = _selection_summary(base_sel)
        result["ppl"]["baseline"] = ppl(as_loaded(baseline, lm, "baseline"), "perplexity (baseline)")
        lap("baseline")
    dense_params = trained.selection.shape.dense_params
    for name in extra:
        with oom_as_error(f"building the {TITLES[name]} baseline"):
            model, kept, info = BUILDERS[name](lm, ids, calib_windows, cfg, bs, reporter)
        result.setdefault("baselines", {})[name] = {
            "label": EXTRA_BASELINES[name], "params": kept, "ratio": kept / dense_params,
            "ppl": ppl(as_loaded(model, lm, name), f"perplexity ({TITLES[name]})"), **info}
        del model
        lap(name)
    result["warnings"] = convergence_warnings(trained.curve, cfg.target_ratio, result["ppl"])
    for warning in result["warnings"]:
        log.warning(warning)
    if save_dir is not None:
        compressed.save_pretrained(save_dir)
        lm.tokenizer.save_pretrained(save_dir)
        result["saved_to"] = str(save_dir)
        lap("save")
    shape = trained.selection.shape
    result.update(
        selection=_selection_summary(trained.selection),
        params={
            "target_ratio": cfg.target_ratio,
            "dense_block_linear": shape.dense_params,
            "target_block_linear": round(cfg.target_ratio * shape.dense_params),
            "kept_block_linear": trained.selection.params,
            "ratio": trained.selection.ratio,
            "hypernetwork_ratio": trained.raw_ratio,
            "dense_total": _params(lm.model),
            "compressed_total": _params(compressed),
        },
        curve=trained.curve,
        protocol={
            "dataset": "wikitext2",
            "split": "test",
            "source": test.origin,
            "seqlen": cfg.eval_seqlen,
            "windows": int(windows.shape[0]),
            "calibration": cfg.calib,
            "calibration_source": calib.origin,
            "ratio_counts": "linear layers of the decoder blocks (q/k/v/o, gate/up/down)",
        },
        timings=timings,
        estimate=estimates[0].to_dict() if estimates else None,
        peak_memory_gb=peak_memory_gb(lm.device),
        environment=environment(lm),
    )
    return StructuralRun(result=result, dense=lm, compressed=compressed, selection=trained.selection,
                         baseline=baseline, hypernetwork=trained.hypernetwork)
