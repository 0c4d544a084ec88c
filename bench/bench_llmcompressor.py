"""Wanda and SparseGPT through llm-compressor and through dsa_core, side by side: the same model, weights, dtype,
device and calibration windows; seconds for the prune and WikiText-2 test perplexity of each, and ours/theirs.

    python bench/bench_llmcompressor.py                          # GPU: 128x2048, 50% and 70%, whole test split
    python bench/bench_llmcompressor.py --nsamples 4 --seqlen 256 --eval-windows 4 --targets 0.5   # CPU quick run
    python bench/bench_llmcompressor.py --model random:llama-2-7b --eval-windows 8   # 7B shape: speed only
    python bench/bench_llmcompressor.py --seeds 0,1,2 --methods wanda   # calibration seeds: is a ppl gap noise?
    python bench/bench_llmcompressor.py --dtype fp64   # without float rounding: do the two tools prune alike?
    python bench/bench_llmcompressor.py --dtype fp64 --recipe owl --targets 0.7   # our recipe, run by llm-compressor

Prints a table: per method and target, each tool's seconds, perplexity and achieved sparsity; on the dsa_core row
ours/theirs for time and perplexity, and the share of weights whose pruned-or-kept state agrees between the two
(over all blocks, and in block 0, whose inputs are the same for both).
With several calibration seeds, a second table gives per method and target the perplexity ratio on each seed,
their geometric mean, and on how many seeds ours is the lower: at 70% a few mask flips early in the model move
perplexity by tens of percent either way (bench/quality.py), so one seed cannot say which tool prunes better.

llm-compressor 0.14.0.1 (transformers 5.15 to 5.17) pins compressed-tensors 0.19.0, which dsa_core.export's
compressed-tensors calls do not run on: install its wheels into a folder of their own, first on the path for this
script alone (datasets and loguru, which it also needs, come from the other carried wheels in /tmp/site):
    pip install --no-deps --target /tmp/site-llmc .carry/whl-llmc/*.whl
    PYTHONPATH=/tmp/site-llmc:/tmp/site python bench/bench_llmcompressor.py

What is timed, for both tools, from dense weights already on the device: the calibration forward passes and the
pruning, block after block (inputs of block i+1 go through the pruned block i). Not timed: loading the model,
reading and tokenising the calibration text (the windows are drawn once and fed to both), perplexity. For
llm-compressor the whole `oneshot` call is timed (argument parsing, graph tracing, its hooks), since that is what
its users pay; it gets its own copy of the dense model, already on the device, so its sequential onloading moves
no weights. Both prune every linear layer of the decoder blocks (not lm_head) to the same ratio: Wanda per output
row, SparseGPT per 128-column block with 1% dampening (both tools' defaults). A warm-up (one window, each tool,
each method, untimed) comes first so that neither pays the device's first-call costs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core import data  # noqa: E402
from dsa_core.allocation import allocate  # noqa: E402
from dsa_core.evaluate import perplexity  # noqa: E402
from dsa_core.models import BLOCK_PATHS, LoadedModel  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402
from dsa_core.prune import achieved_sparsity, layer_ratios, prune_sequential  # noqa: E402
from dsa_core.recipe import MODIFIERS, llmcompressor_recipe, recipe_yaml  # noqa: E402

METHODS = ("wanda", "sparsegpt")


def llmcompressor_api():
    """oneshot, the two modifiers and remove_dispatch; a readable exit where llm-compressor is not installed."""
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")  # its per-layer INFO and METRIC lines drown the table
    try:
        import compressed_tensors
        import llmcompressor
        from compressed_tensors.offload import remove_dispatch
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    except ImportError as e:
        raise SystemExit(f"llm-compressor is not importable ({e}); install the wheels in .carry/whl-llmc with "
                         "pip install --no-deps --target DIR and put DIR first on PYTHONPATH.") from e
    versions = f"llmcompressor {llmcompressor.__version__}, compressed-tensors {compressed_tensors.__version__}"
    modifiers = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}
    return oneshot, modifiers, remove_dispatch, versions


def widen_their_statistics(dtype: torch.dtype) -> None:
    """For a float64 model, llm-compressor's Wanda and SparseGPT statistics in float64, as ours then are. Its modules
    fix them at float32 (WANDA_PRECISION, SGPT_PRECISION, the row scalars' default dtype), which would bring back
    the rounding differences a float64 comparison is run to remove."""
    if dtype != torch.float64:
        return
    from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify
    from llmcompressor.modifiers.pruning.wanda import base, wanda_sparsify

    wanda_sparsify.WANDA_PRECISION = sgpt_sparsify.SGPT_PRECISION = torch.float64
    base.make_empty_row_scalars = lambda module, device=None: torch.zeros(
        module.weight.shape[1], dtype=torch.float64, device=module.weight.device if device is None else device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibration_loader(windows: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader:
    """Our calibration windows, in our order and batches, as the dict batches llm-compressor's pipelines read."""
    rows = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=False)


def prune_ours(lm: LoadedModel, windows: torch.Tensor, method: str, target: float, batch_size: int) -> float:
    """Seconds of dsa_core's sequential prune from the token windows (block 0's inputs captured anew, as
    llm-compressor captures them in each oneshot call)."""
    sync(lm.device)
    start = time.perf_counter()
    prune_sequential(lm, windows, method, np.full(len(lm.blocks), target), "unstructured", batch_size)
    sync(lm.device)
    return time.perf_counter() - start


def prune_theirs(api, lm: LoadedModel, windows: torch.Tensor, method: str, target: float, batch_size: int,
                 offload: str, recipe: str | None = None) -> tuple[LoadedModel, float]:
    """A copy of the model (dense as it is now) pruned by llm-compressor's oneshot, and the seconds oneshot took;
    with `recipe` (YAML, dsa_core.recipe), as it says instead of uniformly to `target`."""
    oneshot, modifiers, remove_dispatch, _ = api
    model = copy.deepcopy(lm.model)
    if recipe is None:
        # The decoder blocks are the targets: each one's linear layers get the ratio, as ours do; not lm_head.
        blocks = rf"re:^{re.escape(BLOCK_PATHS[lm.arch])}\.\d+$"
        recipe = modifiers[method](sparsity=target, mask_structure="0:0", targets=[blocks])
    loader = calibration_loader(windows, batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-llmc-") as tmp:
        if not model.config.name_or_path:  # a random:<shape> model; oneshot re-reads the config from its path
            model.config.save_pretrained(tmp)
            model.config._name_or_path = tmp
        sync(lm.device)
        start = time.perf_counter()
        oneshot(model=model, processor=lm.tokenizer, recipe=recipe, dataset=loader,
                sequential_offload_device=offload)
        sync(lm.device)
        seconds = time.perf_counter() - start
    remove_dispatch(model)  # back to plain parameters, so that perplexity runs the model as ours runs
    return dataclasses.replace(lm, model=model), seconds


def same_mask(a: LoadedModel, b: LoadedModel) -> tuple[float, float]:
    """Share of prunable weights that are zero in both models or non-zero in both: over all blocks, and in block 0.
    Block 0 sees the same inputs in both tools, so there any disagreement is the algorithms'; later blocks also
    inherit the float-order differences of the activations propagated through pruned blocks."""
    same = total = 0
    first = 0.0
    for i in range(len(a.blocks)):
        for m, n in zip(a.linear_layers(i).values(), b.linear_layers(i).values()):
            same += int(((m.weight == 0) == (n.weight == 0)).sum())
            total += m.weight.numel()
        if i == 0:
            first = same / total
    return same / total, first


def first_block_gap(a: LoadedModel, b: LoadedModel) -> float:
    """The largest difference between the two models' block-0 weights, relative to the largest weight: masks alike
    and weights alike are two things for SparseGPT, which updates the weights it keeps."""
    pairs = zip(a.linear_layers(0).values(), b.linear_layers(0).values())
    return max(float((m.weight - n.weight).abs().max() / m.weight.abs().max()) for m, n in pairs)


def layer_sparsity(lm: LoadedModel) -> np.ndarray:
    return np.array([float((m.weight == 0).double().mean()) for i in range(len(lm.blocks))
                     for m in lm.linear_layers(i).values()])


def check_recipe(api, s, calib: torch.Tensor, method: str, allocation: str, target: float, offload: str) -> None:
    """Our llm-compressor recipe of `allocation` (dsa_core.recipe) run by llm-compressor, against dsa_core pruning to
    the same ratios: each tool's largest distance from the asked per-layer sparsity, and how many weights both
    prune alike (over all blocks, and in block 0, whose inputs are the same for both). Once with one ratio per block
    (the blocks are the recipe's targets), once with ratios spread over each block's linear layers (the layers are)."""
    lm = s.lm
    block = allocate(s.stats(method), allocation, target).ratios
    counts = [len(lm.linear_layers(i)) for i in range(len(lm.blocks))]
    spread = np.clip([r + d for r, n in zip(block, counts) for d in np.linspace(-0.1, 0.1, n)], 0.0, 0.95)
    print(f"\n{method}, {allocation} at {target:.0%}: the recipe run by llm-compressor against dsa_core")
    print(f"{'targets':<16}{'targets #':>10}{'ours: max |s - asked|':>24}{'theirs':>10}{'same mask':>11}"
          f"{'block 0':>10}{'block 0 max |dW|/max |W|':>26}")
    for grain, ratios in (("blocks", np.asarray(block)), ("linear layers", spread)):
        recipe = llmcompressor_recipe(lm, ratios, method)
        asked = np.concatenate(layer_ratios(ratios, counts))
        s.restore()
        theirs, _ = prune_theirs(api, lm, calib, method, target, s.batch_size, offload, recipe_yaml(recipe))
        s.restore()
        prune_sequential(lm, calib, method, ratios, "unstructured", s.batch_size)
        n_targets = len(recipe["sparsity_stage"]["sparsity_modifiers"][MODIFIERS[method]]["targets"])
        same, first = same_mask(lm, theirs)
        print(f"{grain:<16}{n_targets:>10}{np.abs(layer_sparsity(lm) - asked).max():>24.4f}"
              f"{np.abs(layer_sparsity(theirs) - asked).max():>10.4f}{100 * same:>10.3f}%{100 * first:>9.3f}%"
              f"{first_block_gap(lm, theirs):>26.2e}",
              flush=True)
        del theirs
        free(lm.device)
    s.restore()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    add_setup_options(ap)
    ap.add_argument("--targets", default="0.5,0.7")
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--batch-size", type=int, default=None, help="calibration batch of both tools (default: ours)")
    ap.add_argument("--offload-device", default="cpu",
                    help="where llm-compressor keeps activations between blocks (its default: cpu)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed one-window run of each tool")
    ap.add_argument("--seeds", default="0", help="calibration seeds; each draws its own windows for both tools")
    ap.add_argument("--recipe", metavar="ALLOCATION", default=None,
                    help="instead: check our llm-compressor recipe of ALLOCATION (e.g. owl) at the first target")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        raise SystemExit(f"Unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}.")
    targets = [float(t) for t in args.targets.split(",") if t]
    seeds = [int(k) for k in args.seeds.split(",") if k]

    api = llmcompressor_api()
    cfg = setup_config(args, batch_size=args.batch_size)
    s = open_session(cfg)
    lm, dev = s.lm, s.lm.device
    widen_their_statistics(lm.dtype)
    calib_text = data.load_text(s.calib, "train", s.data_source)
    calib_ids = data.tokenize(lm.tokenizer, calib_text.text)
    evals, origin = s.eval_windows("wikitext2", "test", args.seqlen, args.eval_windows)
    ppl = lambda model: perplexity(model, evals)  # noqa: E731
    if args.recipe:
        calib = data.calibration_windows(calib_ids, args.nsamples, args.seqlen, seeds[0])
        for method in methods:
            check_recipe(api, s, calib, method, args.recipe, targets[0], args.offload_device)
        return

    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"\nprotocol: model {cfg.model or 'smollm2'} ({lm.prunable_params / 1e6:.0f}M prunable), {device_name}, "
          f"{lm.dtype}; WikiText-2 test ({origin}), seqlen {args.seqlen}, {evals.shape[0]} windows; calibration "
          f"{args.nsamples} windows from {calib_text.origin}, seeds {args.seeds}, batch {s.batch_size}; "
          "uniform unstructured; "
          f"llm-compressor activations offloaded to {args.offload_device}; "
          f"{'no warm-up' if args.no_warmup else 'after a one-window warm-up'}; {api[3]}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"{'seed':>4}  {'method':<11}{'target':>7}  {'tool':<16}{'seconds':>9}{'ppl':>11}{'sparsity':>10}"
          f"{'time ours/theirs':>18}{'ppl ours/theirs':>17}{'same mask':>11}{'block 0':>10}")
    # Each row is printed as it is measured, so that a run stopped midway still reports what it finished.
    rows = []
    add_row(rows, "-", "dense", "-", "-", None, ppl(lm), achieved_sparsity(lm)[0], None)
    if not args.no_warmup:
        warm_windows = data.calibration_windows(calib_ids, 1, args.seqlen, seeds[0])
        for method in methods:
            s.restore()
            warm, _ = prune_theirs(api, lm, warm_windows, method, targets[0], s.batch_size, args.offload_device)
            del warm
            prune_ours(lm, warm_windows, method, targets[0], s.batch_size)
        free(dev)
    for seed in seeds:
        calib = data.calibration_windows(calib_ids, args.nsamples, args.seqlen, seed)
        for target in targets:
            for method in methods:
                s.restore()
                theirs, their_s = prune_theirs(api, lm, calib, method, target, s.batch_size, args.offload_device)
                our_s = prune_ours(lm, calib, method, target, s.batch_size)
                their_ppl, our_ppl = ppl(theirs), ppl(lm)
                agree = same_mask(lm, theirs)
                add_row(rows, seed, method, f"{target:.0%}", "llm-compressor", their_s, their_ppl,
                        achieved_sparsity(theirs)[0], None)
                add_row(rows, seed, method, f"{target:.0%}", "dsa_core", our_s, our_ppl, achieved_sparsity(lm)[0],
                        (our_s / their_s, our_ppl / their_ppl, agree))
                del theirs
                free(dev)
    s.restore()
    if len(seeds) > 1:
        print_seed_summary(rows, seeds)


def add_row(rows: list[tuple], seed, method: str, target: str, tool: str, sec: float | None, p: float,
            sparsity: float, ratios: tuple | None) -> None:
    """Keep a table row and print it: (time ours/theirs, ppl ours/theirs, (same mask, same mask in block 0)) are the
    ratios of a dsa_core row, None on the others."""
    rows.append((seed, method, target, tool, sec, p, sparsity, ratios))
    seconds = "" if sec is None else f"{sec:.2f}"
    vs = ["", "", "", ""] if ratios is None else [f"{ratios[0]:.3f}x", f"{ratios[1]:.4f}x",
                                                  f"{100 * ratios[2][0]:.3f}%", f"{100 * ratios[2][1]:.3f}%"]
    print(f"{seed:>4}  {method:<11}{target:>7}  {tool:<16}{seconds:>9}{p:>11.3f}{100 * sparsity:>9.2f}%"
          f"{vs[0]:>18}{vs[1]:>17}{vs[2]:>11}{vs[3]:>10}", flush=True)


def print_seed_summary(rows: list[tuple], seeds: list[int]) -> None:
    """Per method and target: ours/theirs on each seed, the geometric means, and the seeds where ours is lower."""
    ours = [r for r in rows if r[3] == "dsa_core"]
    print(f"\n{'method':<11}{'target':>7}  {'ppl ours/theirs per seed':<36}{'geo. mean':>10}{'time':>8}"
          f"{'ours lower':>12}")
    for method, target in dict.fromkeys((r[1], r[2]) for r in ours):
        cells = [r for r in ours if (r[1], r[2]) == (method, target)]
        ppl_ratios = np.array([r[7][1] for r in cells])
        time_ratios = np.array([r[7][0] for r in cells])
        per_seed = " ".join(f"{x:.3f}" for x in ppl_ratios)
        print(f"{method:<11}{target:>7}  {per_seed:<36}{np.exp(np.log(ppl_ratios).mean()):>9.3f}x"
              f"{np.exp(np.log(time_ratios).mean()):>7.3f}x{f'{int((ppl_ratios < 1).sum())}/{len(seeds)}':>12}")


if __name__ == "__main__":
    main()
