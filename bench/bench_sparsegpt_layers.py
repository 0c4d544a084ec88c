"""Whether SparseGPT's solved column loop (dsa_core.scores.sparsegpt_levels_solved) prunes a real layer as well as the
reference loop, in float32 on this device: for a few linear layers of the dense model, with their real Hessians
(calibration windows through the dense model, accumulated as the sequential pruning does), the reconstruction error
tr(ΔW H ΔWᵀ) of the loop and of the solved form in float32, and of the solved form in float64, each relative to the
loop in float64, and the share of weights whose pruned-or-kept choice differs from it. A per-layer check, free of the
sequential pipeline's compounding.

    python bench/bench_sparsegpt_layers.py --model gemma3-270m --nsamples 8 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup_options import add_setup_options, setup_config  # noqa: E402
from dsa_core import scores  # noqa: E402
from dsa_core.calibration import ActivationStats  # noqa: E402
from dsa_core.pipeline import open_session  # noqa: E402

LAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")


def hessians(lm, windows: torch.Tensor, picks: list[tuple[int, str]]) -> dict[tuple[int, str], torch.Tensor]:
    """SparseGPT's H = 2/N · XXᵀ of each picked layer's input over the windows through the dense model, accumulated
    as the sequential pruning accumulates it (dsa_core.calibration.ActivationStats)."""
    layers = {f"{i}.{name}": lm.blocks[i].get_submodule(name) for i, name in picks}
    with ActivationStats(layers, hessian=True) as stats, torch.no_grad():
        for w in range(windows.shape[0]):
            lm.model(input_ids=windows[w : w + 1].to(lm.device), use_cache=False)
    return {(i, name): stats.hessian_of(f"{i}.{name}") for i, name in picks}


def reconstruction(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    D = W.double() - W0.double()
    return torch.einsum("ij,jk,ik->", D, H.double(), D).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_options(ap)
    ap.add_argument("--target", type=float, default=0.7)
    args = ap.parse_args()
    session = open_session(setup_config(args))
    lm = session.lm
    n = len(lm.blocks)
    picks = [(i, name) for i in (0, n // 2, n - 1) for name in LAYERS]
    H = hessians(lm, session.calibration_windows(), picks)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    forms = (("loop fp32", scores.sparsegpt_levels, torch.float32),
             ("solved fp32", scores.sparsegpt_levels_solved, torch.float32),
             ("solved fp64", scores.sparsegpt_levels_solved, torch.float64))
    print(f"{lm.name}, SparseGPT {args.target:.0%}, {args.nsamples} x {args.seqlen} calibration windows, "
          f"{lm.device}; relative reconstruction error against the loop in float64 (seconds)")
    print(f"{'layer':<24}{'cond(H)':>10}" + "".join(f"{name:>22}" for name, _, _ in forms) + "   choices differing")
    for key in picks:
        W0, Hk = lm.blocks[key[0]].get_submodule(key[1]).weight.detach(), H[key]
        eig = torch.linalg.eigvalsh(Hk.double())
        reference = scores.sparsegpt_levels(W0.double(), Hk.double(), [args.target])[0]
        base = reconstruction(W0, reference, Hk)
        cells, differing = [], 0.0
        for name, prune, dtype in forms:
            started = time.perf_counter()
            W = prune(W0.to(dtype), Hk.to(dtype), [args.target])[0]
            sync()
            cells.append(f"{reconstruction(W0, W, Hk) / base - 1:+.2e} ({time.perf_counter() - started:.2f})")
            if name == "solved fp32":
                differing = ((W == 0) != (reference == 0)).float().mean().item()
        print(f"{str(key):<24}{(eig[-1] / eig[0].clamp_min(1e-30)).item():>10.2e}"
              + "".join(f"{c:>22}" for c in cells) + f"   {differing:.4f}")


if __name__ == "__main__":
    main()
