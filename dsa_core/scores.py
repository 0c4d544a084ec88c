"""Element-wise pruning scores and the masks they induce: Magnitude, Wanda, SparseGPT.

Scores are compared within a group, an output row or a whole layer (each metric declares its own:
dsa_core.metrics). A score's order inside its group is all that re-masking needs, so it is kept as a rank tensor
(`rank_in_group`) and a new ratio becomes one comparison. SparseGPT's OBS weight update lives here too. Operates on
single weight tensors: the arithmetic only; which metric uses what is dsa_core.metrics', walking the model
dsa_core.prune's.
"""

from __future__ import annotations

import math
import re

import torch

from dsa_core.errors import ConfigError
from dsa_core.models import widened

PATTERNS = ("unstructured", "2:4", "4:8")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """None for unstructured, else (n, m): prune n of every m consecutive weights along the input dim."""
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", pattern or "")
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise ConfigError(f"Unknown pattern '{pattern}'; use unstructured or N:M such as 2:4 or 4:8.")
    return int(match[1]), int(match[2])


def wanda(weight: torch.Tensor, col_sqnorm: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂ (float32, or float64 for a float64 model)."""
    return widened(weight).abs() * col_sqnorm.sqrt().unsqueeze(0)


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    return widened(weight).abs()


def inverse_hessian_factor(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's preparation: dead inputs get H_jj=1, dampening adds percdamp·mean(diag H), and the
    upper Cholesky factor of H⁻¹ is returned with the mask of dead inputs."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], device=H.device)
    try:
        L = torch.linalg.cholesky(H)
    except torch.linalg.LinAlgError:
        # Rounding can leave a near-singular H; more damping is what the reference does by hand.
        H += 0.1 * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], device=H.device)
        L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead


def sparsegpt_saliency(weight: torch.Tensor, Hinv_factor: torch.Tensor) -> torch.Tensor:
    """w² / [H⁻¹]²_jj, the OBS error of removing each weight; SparseGPT's pruning score."""
    return widened(weight).pow(2) / torch.diag(Hinv_factor).pow(2).unsqueeze(0)


def rank_in_group(scores: torch.Tensor, group: str) -> torch.Tensor:
    """Each element's position in ascending score order within its row or its layer (0 = pruned first).
    Stored as int16 where the group fits, int32 otherwise, since the cache holds one per weight."""
    if group == "row":
        n = scores.shape[1]
        order = scores.argsort(dim=1)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n, device=scores.device).expand_as(order))
    else:
        n = scores.numel()
        order = scores.flatten().argsort()
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=scores.device)
        rank = rank.view_as(scores)
    return rank.to(torch.int16 if n <= torch.iinfo(torch.int16).max + 1 else torch.int32)


def pruned_count(rank: torch.Tensor, ratio: float, group: str) -> int:
    """How many of a group's weights a ratio removes: floor(group size × ratio), as the references do."""
    size = rank.shape[1] if group == "row" else rank.numel()
    return int(size * ratio)


def keep_mask_from_rank(rank: torch.Tensor, ratio: float, group: str) -> torch.Tensor:
    return rank >= pruned_count(rank, ratio, group)


def nm_rank(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Rank of each weight within its group of m consecutive inputs (int8); keep where rank >= n."""
    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"An N:{m} pattern needs input widths divisible by {m}; a layer has {cols}.")
    grouped = scores.view(rows, cols // m, m)
    order = grouped.argsort(dim=2)
    rank = torch.empty_like(order)
    rank.scatter_(2, order, torch.arange(m, device=scores.device).expand_as(order))
    return rank.view(rows, cols).to(torch.int8)


@torch.no_grad()
def sparsegpt_prune_(
    weight: torch.Tensor,
    H: torch.Tensor,
    ratio: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    exact: bool = True,
) -> None:
    """Prune `weight` in place with SparseGPT (Frantar & Alistarh, 2023): see `sparsegpt_levels`. `exact=False`
    takes `sparsegpt_levels_solved` instead, the same up to rounding (it has no n:m groups: those keep the loop)."""
    if exact or nm is not None:
        pruned = sparsegpt_levels(weight, H, [ratio], nm, blocksize, percdamp)
    else:
        pruned = sparsegpt_levels_solved(weight, H, [ratio], blocksize, percdamp)
    weight.copy_(pruned[0].to(weight.dtype))


@torch.no_grad()
def sparsegpt_levels(
    weight: torch.Tensor,
    H: torch.Tensor,
    ratios: list[float],
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT's pruned copies of `weight` at each of `ratios`, stacked [K, rows, cols] (widened dtype): masks
    chosen per 128-column block by w²/[H⁻¹]²_jj (or per n:m group), and the OBS update spreads each removed
    weight's error over the columns not yet processed. A transcription of the reference `fasterprune`, without
    quantisation, batched over ratios: the K copies share H⁻¹ and one column loop, which costs as much as one."""
    Hinv, dead = inverse_hessian_factor(H, percdamp)
    W = widened(weight).unsqueeze(0).repeat(len(ratios), 1, 1)
    W[:, :, dead] = 0
    copies, rows, cols = W.shape
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, :, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = _block_mask(W1, Hinv1, ratios) if nm is None else torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, :, i]
            d = Hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                tmp = W1[:, :, i : i + m].pow(2) / torch.diag(Hinv1)[i : i + m].reshape(1, 1, -1).pow(2)
                mask1.scatter_(2, i + torch.topk(tmp, n, dim=2, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, :, i]] = 0
            Q1[:, :, i] = q
            err1 = (w - q) / d
            W1[:, :, i:] -= err1.unsqueeze(2).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, :, i] = err1
        W[:, :, i1:i2] = Q1
        W[:, :, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return _finite(W)


@torch.no_grad()
def sparsegpt_levels_solved(
    weight: torch.Tensor,
    H: torch.Tensor,
    ratios: list[float],
    blocksize: int = 128,
    percdamp: float = 0.01,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """`sparsegpt_levels` (unstructured) up to rounding, with each block's column loop solved at once.

    Within a block, with U the block of the H⁻¹ factor (upper triangular) and m a row's mask, the loop gives
    err_i = m_i·w_i/U_ii, w_i = w⁰_i − Σ_{j<i} err_j·U_ji: err is 0 off the mask and Σ_{j≤i} err_j·U_ji = w⁰_i on
    it, i.e. err·A = w⁰⊙m with A = U⊙(m mᵀ) + diag(1−m), or as well A = U·diag(m) + diag(1−m) (the rows of U off
    the mask meet err_j = 0), made in one pass. One triangular solve per row, batched `chunk_bytes` of A at a time
    (by default 256 MB on a GPU; 8 MB, which stays in cache, on a CPU), in place of ~8 kernels per column. The
    kept weights are the w_i, w = w⁰ − err·triu(U, 1), zeroed on the mask."""
    Hinv, dead = inverse_hessian_factor(H, percdamp)
    W = widened(weight).unsqueeze(0).repeat(len(ratios), 1, 1)
    W[:, :, dead] = 0
    copies, rows, cols = W.shape
    if chunk_bytes is None:
        chunk_bytes = (256 if W.is_cuda else 8) << 20
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, :, i1:i2]
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = _block_mask(W1, Hinv1, ratios)
        w0 = W1.reshape(-1, count)
        m = mask1.reshape(-1, count).to(W.dtype)
        Err1 = torch.empty_like(w0)
        step = max(1, chunk_bytes // (count * count * W.element_size()))
        for r1 in range(0, w0.shape[0], step):
            mr = m[r1 : r1 + step]
            A = Hinv1 * mr.unsqueeze(1)
            A.diagonal(dim1=1, dim2=2).add_(1 - mr)
            rhs = (w0[r1 : r1 + step] * mr).unsqueeze(1)
            Err1[r1 : r1 + step] = torch.linalg.solve_triangular(A, rhs, upper=True, left=False).squeeze(1)
            del A  # freed before the next chunk's is made
        Err1 = Err1.view(copies, rows, count)
        Q1 = (W1 - Err1.matmul(torch.triu(Hinv1, diagonal=1))).masked_fill_(mask1, 0)
        W[:, :, i1:i2] = Q1
        W[:, :, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return _finite(W)


def _block_mask(W1: torch.Tensor, Hinv1: torch.Tensor, ratios: list[float]) -> torch.Tensor:
    """The weights SparseGPT prunes in one block of columns (True = pruned), per copy [K, rows, count]: those of
    the smallest w²/[H⁻¹]²_jj, k = ⌊rows · count · ratio⌋ of them."""
    copies, rows, count = W1.shape
    ks = [int(rows * count * r) for r in ratios]
    if not any(ks):
        return torch.zeros_like(W1, dtype=torch.bool)
    # As the reference: `tmp <= sorted[k]`, one weight more than k per block (its users' numbers are made
    # so); where k is 0 we prune nothing, not the reference's one weight, so that a ratio of 0 keeps all.
    tmp = W1.pow(2) / torch.diag(Hinv1).reshape(1, 1, -1).pow(2)
    flat, at = tmp.reshape(copies, -1), [min(k, rows * count - 1) for k in ks]
    if flat.is_cuda:  # the reference's sorted[k]: on a GPU, one batched sort
        threshold = flat.sort(dim=1).values.gather(1, torch.tensor(at, device=flat.device).unsqueeze(1))
    else:  # on a CPU, selection instead (a sort took half of a search's level pruning there)
        threshold = torch.stack([flat[c].kthvalue(a + 1).values for c, a in enumerate(at)])
    threshold = threshold.view(copies, 1, 1)
    pruning = torch.tensor([k > 0 for k in ks], device=W1.device).view(copies, 1, 1)
    return (tmp <= threshold) & pruning


def _finite(W: torch.Tensor) -> torch.Tensor:
    if not math.isfinite(W.abs().max().item()):
        raise FloatingPointError("SparseGPT produced non-finite weights; the Hessian is ill-conditioned.")
    return W
