"""DISP-LLM structural pruning in one run against three baselines at the same parameter count and calibration
tokens: train the hypernetwork, compress, and measure parameter count against the target, WikiText-2 test
perplexity, optionally the zero-shot mean (--zeroshot), and greedy generation speed at batch 1 and 16. Rows:

    dense                       the model as loaded
    DISP-LLM                    widths multiples of 8 (`--align`); "exact widths": the same hypernetwork fitted
                                without rounding, which shows what alignment buys
    same hypernetwork, uniform  DISP-LLM's hypernetwork and objective, trained for the same steps on the same
                                windows, but with one hidden selection shared by every block and side and one
                                intermediate width (dsa_core.structural.layouts.Shared): what dimension
                                independence buys
    uniform, activation norms   uniform widths, one shared hidden index set chosen by activation norms, untrained
    ShortGPT                    whole blocks removed by Block Influence (Men et al., 2024), as many as the budget
                                says, on the same calibration windows as the activation-norm baseline
    DISP class, full widths     the compressed model's class with nothing pruned: separates the speed of the
                                implementation from the speed of pruning

    python bench/bench_structural.py                                   # GPU defaults: SmolLM2, ≤ 5 min training
    python bench/bench_structural.py --model gemma3-270m               # a second, non-LLaMA family
    python bench/bench_structural.py --prune-heads                     # DISP-LLM selects key/value heads too (the
                                                                       # baselines keep every head)
    python bench/bench_structural.py --steps 4 --seqlen 64 --batch-size 1 --eval-windows 2 --eval-seqlen 128 \\
        --baseline-samples 2 --new-tokens 4 --repeats 1 --batches 1 --device cpu --model random:tiny  # CPU smoke

Prints a table; --json writes the full result (loss curves, widths) to a file, --save the compressed model.
SliceGPT-style orthogonal slicing is not a row: docs/structural.md says why.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.options import add_options, values  # noqa: E402
from dsa_core import data  # noqa: E402
from dsa_core.evaluate import default_batch_size, perplexity  # noqa: E402
from dsa_core.models import LoadedModel, load_model  # noqa: E402
from dsa_core.reporter import Reporter  # noqa: E402
from dsa_core.structural.baseline import block_influence, blocks_to_remove, remove_blocks  # noqa: E402
from dsa_core.structural.compressed import compress  # noqa: E402
from dsa_core.structural.layouts import Independent, Shared  # noqa: E402
from dsa_core.structural.runner import run_structural  # noqa: E402
from dsa_core.structural.selection import BlockShape, Selection  # noqa: E402
from dsa_core.structural.training import StructuralConfig, train_selection  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def tokens_per_second(model, prompts: torch.Tensor, new_tokens: int, repeats: int) -> float:
    """Greedy generation of exactly `new_tokens` per prompt with a KV cache: median over `repeats` timed calls
    after one untimed warm-up call of the same shape."""
    device = prompts.device
    args = dict(attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, pad_token_id=0, temperature=None, top_p=None, top_k=None)
    model.generate(prompts, **args)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = model.generate(prompts, **args)
        sync(device)
        times.append(time.perf_counter() - start)
        assert out.shape[1] == prompts.shape[1] + new_tokens
    return prompts.shape[0] * new_tokens / statistics.median(times)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(ap, StructuralConfig, ("model", "target_ratio", "steps", "batch_size", "seqlen", "lr", "lam",
                                       "max_train_seconds", "eval_seqlen", "eval_windows", "baseline_samples"),
                steps={"default": 1000}, batch_size={"default": 8}, seqlen={"default": 1024},
                max_train_seconds={"default": 120.0, "help": "stop each training after this long, so that the whole "
                                   "run fits in a few minutes"})
    ap.add_argument("--zeroshot", default=None, help="also the zero-shot mean on these tasks (e.g. piqa,arc_easy)")
    ap.add_argument("--zeroshot-limit", type=int, default=None, help="examples per zero-shot task")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,16", help="generation batch sizes")
    ap.add_argument("--repeats", type=int, default=3)
    add_options(ap, StructuralConfig, ("device", "dtype", "data_source", "align", "prune_heads", "seed"),
                data_source={"default": "local"})
    ap.add_argument("--save", default=None, help="save the compressed model here")
    ap.add_argument("--json", default=None, help="write the full result to this file")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    started = time.perf_counter()
    lm = load_model(args.model, args.device, args.dtype)
    cfg = StructuralConfig(**values(args, StructuralConfig)).validate()

    class Progress(Reporter):
        def on_progress(self, phase: str, done: int, total: int) -> None:
            if done == total or done % 100 == 0:
                print(f"  {phase} {done}/{total}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    progress = Progress()
    run = run_structural(cfg, progress, lm=lm, save_dir=args.save)
    result, p = run.result, run.result["params"]
    shape = BlockShape.from_config(lm.model.config)
    bos = lm.window_bos
    test_ids = data.tokenize(lm.tokenizer, data.load_text("wikitext2", "test", args.data_source).text)
    test_windows = data.eval_windows(test_ids, args.eval_seqlen, args.eval_windows, bos_id=bos)
    calib_ids = data.tokenize(lm.tokenizer, data.load_text(cfg.calib, "train", args.data_source).text)
    calib_windows = data.calibration_windows(calib_ids, cfg.baseline_samples, cfg.seqlen, cfg.seed, bos)
    bs = default_batch_size(lm.device)
    rest = p["dense_total"] - p["dense_block_linear"]  # embeddings, norms, head: never pruned

    # The same hypernetwork fitted to exact widths, and the same one constrained to uniform widths.
    exact_sel = Independent(shape, cfg.prune_heads).fit(run.hypernetwork.scores(), args.target_ratio, align=1)
    clock = time.perf_counter()
    shared = train_selection(lm, calib_ids, cfg, progress, layout=Shared)
    shared_seconds = time.perf_counter() - clock
    # ShortGPT: the blocks of least influence, removed.
    influence = block_influence(lm, calib_windows, bs)
    dropped = blocks_to_remove(influence, args.target_ratio)
    short = remove_blocks(lm, dropped)
    short_block = p["dense_block_linear"] * (shape.n_blocks - len(dropped)) // shape.n_blocks

    selected = {"DISP-LLM": (run.compressed, run.selection.params),
                "DISP-LLM, exact widths": (compress(lm, exact_sel), exact_sel.params),
                "same hypernetwork, uniform": (compress(lm, shared.selection), shared.selection.params),
                "uniform, activation norms": (run.baseline, result["baseline"]["params"]),
                "ShortGPT": (short, short_block)}
    models = {"dense": (lm.model, p["dense_block_linear"]), **selected,
              "DISP class, full widths": (compress(lm, Selection.full(shape)), p["dense_block_linear"])}
    measured = {"dense": result["ppl"]["dense"], "DISP-LLM": result["ppl"]["compressed"],
                "uniform, activation norms": result["ppl"]["baseline"]}
    rows: dict[str, dict] = {}
    loaded = {name: lm if name == "dense" else LoadedModel(model, lm.tokenizer, name, model.config.model_type,
                                                           lm.device, lm.dtype) for name, (model, _) in models.items()}
    # Every perplexity before any zero-shot score, each printed as it comes: a run cut short keeps them.
    for name, (_, block) in models.items():
        row = rows[name] = {"block_params": int(block), "share": block / p["dense_block_linear"],
                            "all_params": rest + int(block)}
        if name in measured:
            row["ppl"] = measured[name]
        elif name != "DISP class, full widths":  # computes what the dense model does
            row["ppl"] = perplexity(loaded[name], test_windows, bs)
        if "ppl" in row:
            print(f"  {name}: perplexity {row['ppl']:.2f}", file=sys.stderr)
    if args.zeroshot:
        from dsa_core.zeroshot.harness import evaluate_tasks

        for name in models:
            if name != "DISP class, full widths":
                rows[name]["zeroshot"] = evaluate_tasks(loaded[name], args.zeroshot, args.zeroshot_limit,
                                                        source=args.data_source)
                print(f"  {name}: zero-shot mean {rows[name]['zeroshot']['mean_acc']:.3f}", file=sys.stderr)

    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        prompts = data.eval_windows(test_ids, args.prompt_len, b, bos_id=bos).to(lm.device)
        for name, (model, _) in models.items():
            rows[name].setdefault("tokens_per_second", {})[str(b)] = tokens_per_second(
                model, prompts, args.new_tokens, args.repeats)
    result.update(rows=rows, shortgpt={"influence": influence.tolist(), "removed": dropped},
                  shared={"curve": shared.curve, "widths": shared.selection.widths.tolist(), "seconds": shared_seconds},
                  generation={"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats})
    print_table(args, lm, result, time.perf_counter() - started)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


def print_table(args: argparse.Namespace, lm: LoadedModel, result: dict, total_s: float) -> None:
    p, rows = result["params"], result["rows"]
    device = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    batches = args.batches.split(",")
    print(f"\nmodel {args.model or 'smollm2'} ({lm.arch}), {device}, {lm.dtype}; hypernetworks {len(result['curve'])} "
          f"and {len(result['shared']['curve'])} steps × {args.batch_size}×{args.seqlen} in "
          f"{result['timings']['training']:.0f} s and {result['shared']['seconds']:.0f} s; perplexity: WikiText-2 "
          f"test, seqlen {args.eval_seqlen}, {result['protocol']['windows']} windows; generation: greedy, prompt "
          f"{args.prompt_len}, {args.new_tokens} new tokens, median of {args.repeats}; whole run {total_s:.0f} s")
    print(f"target: {p['target_block_linear']:,} block linear parameters ({args.target_ratio:.0%} of "
          f"{p['dense_block_linear']:,}); DISP-LLM keeps {p['kept_block_linear']:,} "
          f"({p['kept_block_linear'] / p['target_block_linear'] - 1:+.3%} of the target; hypernetwork alone "
          f"{p['hypernetwork_ratio']:.4f}); ShortGPT removes blocks {result['shortgpt']['removed']}")
    zeroshot = any("zeroshot" in r for r in rows.values())
    header = f"{'':<28}{'block params':>14}{'share':>9}{'all params':>14}{'ppl':>10}"
    header += f"{'0-shot':>8}" * zeroshot + "".join(f"{f'tok/s b={b}':>13}" for b in batches)
    print(header)
    for name, row in rows.items():
        line = f"{name:<28}{row['block_params']:>14,}{row['share']:>9.2%}{row['all_params']:>14,}"
        line += f"{row['ppl']:>10.2f}" if "ppl" in row else f"{'(= dense)':>10}"
        if zeroshot:
            line += f"{row['zeroshot']['mean_acc']:>8.3f}" if "zeroshot" in row else f"{'':>8}"
        line += "".join(f"{row['tokens_per_second'][b]:>13.1f}" for b in batches)
        print(line)
    baselines = ("same hypernetwork, uniform", "uniform, activation norms", "ShortGPT")
    best = min(baselines, key=lambda n: rows[n]["ppl"])
    print(f"DISP-LLM perplexity vs the best baseline ({best}): {rows['DISP-LLM']['ppl'] / rows[best]['ppl'] - 1:+.1%}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")


if __name__ == "__main__":
    main()
