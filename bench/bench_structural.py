"""DISP-LLM structural pruning of SmolLM2 in one run: train the hypernetwork, compress, and measure parameter
count against the target, WikiText-2 test perplexity (dense, compressed, uniform-width baseline at the same
count) and greedy generation speed at batch 1 and 16 (dense, compressed, baseline, and the compressed model's
class at full widths, which separates the speed of the implementation from the speed of pruning). Kept widths
are multiples of 8 (`--align`); a row with the same hypernetwork fitted to exact widths shows what that buys.

    python bench/bench_structural.py                                   # GPU defaults: ≤ 5 minutes on an H100
    python bench/bench_structural.py --steps 20 --seqlen 128 --batch-size 1 --eval-windows 4 \\
        --eval-seqlen 256 --new-tokens 16 --device cpu                 # CPU smoke run

Prints a table; --json writes the full result (loss curve, widths) to a file, --save the compressed model.
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

from dsa_core import data  # noqa: E402
from dsa_core.evaluate import perplexity  # noqa: E402
from dsa_core.models import load_model  # noqa: E402
from dsa_core.structural.compressed import as_loaded, compress  # noqa: E402
from dsa_core.structural.runner import run_structural  # noqa: E402
from dsa_core.structural.selection import BlockShape, Selection, fit_budget  # noqa: E402
from dsa_core.structural.training import StructuralConfig  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct ($DSA_DEFAULT_GGUF)")
    ap.add_argument("--target-ratio", type=float, default=0.7)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lam", type=float, default=16.0)
    ap.add_argument("--max-train-seconds", type=float, default=120.0,
                    help="stop training after this long, so that the whole run fits in five minutes")
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--eval-windows", type=int, default=None, help="default: the whole test split")
    ap.add_argument("--baseline-samples", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,16", help="generation batch sizes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--data-source", default="local")
    ap.add_argument("--align", type=int, default=8, help="kept widths are multiples of this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="save the compressed model here")
    ap.add_argument("--json", default=None, help="write the full result to this file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    started = time.perf_counter()
    lm = load_model(args.model, args.device, args.dtype)
    cfg = StructuralConfig(
        model=args.model, target_ratio=args.target_ratio, steps=args.steps, batch_size=args.batch_size,
        seqlen=args.seqlen, lr=args.lr, lam=args.lam, eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows,
        baseline_samples=args.baseline_samples, max_train_seconds=args.max_train_seconds, align=args.align,
        seed=args.seed, data_source=args.data_source, device=args.device, dtype=args.dtype,
    ).validate()

    def progress(phase: str, done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            print(f"  {phase} {done}/{total}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    run = run_structural(cfg, progress=progress, lm=lm, save_dir=args.save)
    result = run.result
    shape = BlockShape.from_config(lm.model.config)
    full = compress(lm, Selection.full(shape))
    # The same hypernetwork fitted to the budget without rounding widths to multiples of 8: what alignment buys.
    exact_sel = fit_budget(shape, run.hypernetwork.scores(), args.target_ratio, align=1)
    exact = compress(lm, exact_sel)
    test_ids = data.tokenize(lm.tokenizer, data.load_text("wikitext2", "test", args.data_source).text)
    test_windows = data.eval_windows(test_ids, args.eval_seqlen, args.eval_windows)
    exact_ppl = perplexity(as_loaded(exact, lm, "exact widths"), test_windows)

    batches = [int(b) for b in args.batches.split(",")]
    models = {"dense": lm.model, "DISP-LLM": run.compressed, "DISP-LLM, exact widths": exact,
              "uniform baseline": run.baseline, "DISP class, full widths": full}
    speed: dict[str, dict[int, float]] = {name: {} for name in models}
    for b in batches:
        prompts = data.eval_windows(test_ids, args.prompt_len, b).to(lm.device)
        for name, model in models.items():
            speed[name][b] = tokens_per_second(model, prompts, args.new_tokens, args.repeats)
    result["generation"] = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
                            "tokens_per_second": {n: {str(b): v for b, v in s.items()} for n, s in speed.items()}}
    total_s = time.perf_counter() - started

    p, ppl = result["params"], result["ppl"]
    base_params = result["baseline"]["params"]
    device = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"\nmodel {args.model or 'smollm2'}, {device}, {lm.dtype}; hypernetwork {len(result['curve'])} steps × "
          f"{args.batch_size}×{args.seqlen} in {result['timings']['training']:.0f} s; perplexity: WikiText-2 test, "
          f"seqlen {args.eval_seqlen}, {result['protocol']['windows']} windows; generation: greedy, prompt "
          f"{args.prompt_len}, {args.new_tokens} new tokens, median of {args.repeats}; whole run {total_s:.0f} s")
    print(f"target: {p['target_block_linear']:,} block linear parameters ({args.target_ratio:.0%} of "
          f"{p['dense_block_linear']:,}); DISP-LLM keeps {p['kept_block_linear']:,} "
          f"({p['kept_block_linear'] / p['target_block_linear'] - 1:+.3%} of the target; hypernetwork alone "
          f"{p['hypernetwork_ratio']:.4f})")
    header = f"{'':<26}{'block params':>14}{'share':>9}{'all params':>14}{'ppl':>10}"
    header += "".join(f"{f'tok/s b={b}':>13}" for b in batches)
    print(header)
    rows = [("dense", p["dense_block_linear"], p["dense_total"], ppl["dense"]),
            ("DISP-LLM", p["kept_block_linear"], p["compressed_total"], ppl["compressed"]),
            ("DISP-LLM, exact widths", exact_sel.params, p["compressed_total"] - p["kept_block_linear"]
             + exact_sel.params, exact_ppl),
            ("uniform baseline", base_params, p["compressed_total"] - p["kept_block_linear"] + base_params,
             ppl["baseline"]),
            ("DISP class, full widths", p["dense_block_linear"], p["dense_total"], None)]
    for name, block, total, value in rows:
        line = f"{name:<26}{block:>14,}{block / p['dense_block_linear']:>9.2%}{total:>14,}"
        line += f"{value:>10.2f}" if value is not None else f"{'(= dense)':>10}"
        line += "".join(f"{speed[name][b]:>13.1f}" for b in batches)
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
