"""Per-block statistics: the only thing an allocation sees of a model.

Scoring (dsa_core.scores) fills a BlockStats once; allocations are pure functions of it, so a profile
can be recomputed in milliseconds without touching the model. Holds data only, no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# M values whose outlier ratios are computed exactly at scoring time (OWL's default is 5).
OUTLIER_MULTIPLIERS = (3.0, 5.0, 7.0, 10.0)


@dataclass
class BlockStats:
    """Statistics of the L decoder blocks of one model under one scoring metric.

    params: (L,) number of prunable weights per block (its linear layers' weights).
    layer_shapes: per block, (out_features, in_features) of each linear layer, in module order.
    score_samples: per block, a seeded uniform random sample (float32, with replacement) of the
        block's element-wise scores, concatenated over its linear layers. Reductions of allocation
        functions run on these; the sample size bounds a profile's cost, not the model's size.
    outlier_ratios: M -> (L,) exact share of the block's scores above M × the block's mean score
        (OWL's D_l), computed from all scores, not the sample.
    alpha_hill: (L,) PL_Alpha_Hill of each block, the mean over its linear layers (AlphaPruning); None until asked
        for (PruningSession.stats(needs=...), as an allocation declares), since it costs one SVD per layer.
    metric: name of the score ("wanda", "magnitude", ...) the samples were drawn from.
    reductions: memo of per-block reductions of the samples, keyed by (pre-process ops, reduction), filled by
        dsa_core.functions. They are the costly part of a profile (millions of elements) and a search proposes
        the same few pre/reduction pairs again and again with other transforms; not part of the saved form.
    """

    params: np.ndarray
    layer_shapes: list[list[tuple[int, int]]]
    score_samples: list[np.ndarray]
    outlier_ratios: dict[float, np.ndarray] = field(default_factory=dict)
    alpha_hill: np.ndarray | None = None
    metric: str = "wanda"
    reductions: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_blocks(self) -> int:
        return len(self.params)

    def to_dict(self) -> dict:
        return {
            "params": self.params.tolist(),
            "layer_shapes": [[list(s) for s in block] for block in self.layer_shapes],
            "score_samples": [s.tolist() for s in self.score_samples],
            "outlier_ratios": {str(m): r.tolist() for m, r in self.outlier_ratios.items()},
            "alpha_hill": None if self.alpha_hill is None else self.alpha_hill.tolist(),
            "metric": self.metric,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BlockStats:
        return cls(
            params=np.asarray(d["params"], dtype=np.int64),
            layer_shapes=[[tuple(s) for s in block] for block in d["layer_shapes"]],
            score_samples=[np.asarray(s, dtype=np.float32) for s in d["score_samples"]],
            outlier_ratios={float(m): np.asarray(r) for m, r in d["outlier_ratios"].items()},
            alpha_hill=None if d.get("alpha_hill") is None else np.asarray(d["alpha_hill"]),
            metric=d.get("metric", "wanda"),
        )

    def save(self, path) -> None:
        """Compact binary form (npz) for caching between runs."""
        arrays = {"params": self.params, "alpha_hill": np.asarray([] if self.alpha_hill is None else self.alpha_hill)}
        for i, s in enumerate(self.score_samples):
            arrays[f"sample_{i}"] = s
        for m, r in self.outlier_ratios.items():
            arrays[f"outlier_{m}"] = r
        shapes = np.asarray([[b, o, i] for b, block in enumerate(self.layer_shapes) for o, i in block], dtype=np.int64)
        np.savez(path, shapes=shapes, metric=np.asarray(self.metric), **arrays)

    @classmethod
    def load(cls, path) -> BlockStats:
        z = np.load(path)
        n = len(z["params"])
        shapes: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for b, o, i in z["shapes"]:
            shapes[int(b)].append((int(o), int(i)))
        alpha = z["alpha_hill"]
        return cls(
            params=z["params"],
            layer_shapes=shapes,
            score_samples=[z[f"sample_{i}"] for i in range(n)],
            outlier_ratios={float(k.split("_", 1)[1]): z[k] for k in z.files if k.startswith("outlier_")},
            alpha_hill=alpha if alpha.size else None,
            metric=str(z["metric"]),
        )
