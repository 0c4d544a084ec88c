"""Text data: calibration windows and the windows of the perplexity protocol.

WikiText-2 and C4 load by name through `datasets` where the Hugging Face hub is reachable; offline, the
copies shipped in the data folder (env DSA_DATA_DIR, else ../shared/data beside the repository) stand in
for WikiText-2, and a plain text file can be named by path. Every text records where it came from, so
each reported number carries its protocol. No model code here beyond calling a tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from dsa_core.errors import DataError

log = logging.getLogger(__name__)

DATA_ENV = "DSA_DATA_DIR"
SOURCES = ("auto", "hub", "local")


@dataclass(frozen=True)
class Text:
    """A text and its provenance ("hub:<id>/<split>" or "local:<path>#sha256:<12 hex>")."""

    name: str
    split: str
    text: str
    origin: str


def data_dir() -> Path:
    """The folder of shipped datasets: $DSA_DATA_DIR, else the first shared/data found near the code."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    repo = Path(__file__).resolve().parent.parent
    for candidate in (repo.parent / "shared" / "data", repo / "shared" / "data", Path.cwd() / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "data"


@functools.cache
def hub_reachable() -> bool:
    """True when the Hugging Face hub answers; False offline or when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("HF_DATASETS_OFFLINE"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _local(path: Path, name: str, split: str, text: str) -> Text:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Text(name, split, text, f"local:{path}#sha256:{digest}")


def _read(path: Path) -> str:
    # The shipped files use CRLF and one may start with a byte-order mark; normalise both.
    try:
        return path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise DataError(f"'{path}' is not UTF-8 text (byte {e.start}); give a plain text file.") from None


def _wikitext2_local(split: str) -> Text:
    root = data_dir()
    if split == "test":
        path = root / "wikitext-2-raw" / "wiki.test.raw"
        if not path.exists():
            raise DataError(f"WikiText-2 test split not found at {path}; set {DATA_ENV} or connect to the hub.")
        # The file holds the split's non-empty rows, one per line; the protocol joins rows with "\n\n".
        rows = [r for r in _read(path).split("\n") if r.strip()]
        return _local(path, "wikitext2", split, "\n\n".join(rows))
    path = root / "wikitext-2" / "wiki.valid.tokens"
    if not path.exists():
        raise DataError(f"WikiText-2 validation split not found at {path}; set {DATA_ENV} or connect to the hub.")
    # Offline, calibration ("train") also draws from the validation file: the test split stays untouched.
    return _local(path, "wikitext2", "validation", _read(path))


def _wikitext2_hub(split: str) -> Text:
    from datasets import load_dataset

    rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    return Text("wikitext2", split, "\n\n".join(rows), f"hub:wikitext/wikitext-2-raw-v1/{split}")


def _c4_hub(split: str) -> Text:
    from datasets import load_dataset

    # The shard Wanda and SparseGPT calibrate on; documents are joined so that windows can be drawn.
    shard = {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}
    rows = load_dataset("allenai/c4", data_files={split: shard[split]}, split=split)["text"][:20000]
    return Text("c4", split, "\n\n".join(rows), f"hub:allenai/c4/{shard[split]}")


def check_text_source(name: str) -> Path | None:
    """A known dataset name (None) or the path of a readable text file; anything else is refused here,
    before a model is loaded for nothing."""
    if name in ("wikitext2", "c4"):
        return None
    path = Path(name).expanduser()
    if not path.is_file():
        raise DataError(f"'{name}' is neither a known dataset (wikitext2, c4) nor a readable text file.")
    return path


def load_text(name: str, split: str = "test", source: str = "auto") -> Text:
    """Load "wikitext2" or "c4" (split test/validation/train) or a text file given by path."""
    if source not in SOURCES:
        raise DataError(f"Unknown data source '{source}'; choose one of {', '.join(SOURCES)}.")
    if name not in ("wikitext2", "c4"):
        path = check_text_source(name)
        return _local(path, path.name, "file", _read(path))
    use_hub = source == "hub" or (source == "auto" and hub_reachable())
    if name == "c4":
        if not use_hub:
            raise DataError("C4 is only available from the Hugging Face hub, which is unreachable; "
                            "use wikitext2 or a text file for calibration.")
        return _c4_hub("validation" if split == "test" else split)
    if use_hub:
        try:
            return _wikitext2_hub(split)
        except Exception as e:  # network failures surface as many exception types; fall back, loudly
            if source == "hub":
                raise DataError(f"Could not load WikiText-2 from the hub: {e}") from e
            log.warning("WikiText-2 from the hub failed (%s); using the shipped copy", e)
    return _wikitext2_local(split)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text, tokenised once, as a 1-D LongTensor."""
    ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids
    return ids[0]


# Windows and BOS. The literature's protocol (Wanda's and SparseGPT's code, for LLaMA) cuts windows from the text
# tokenised once, so only the first window starts with the tokenizer's <bos>; that stays the default. Model
# families that need <bos> at the start of every sequence (Gemma: without it its perplexity roughly doubles) pass
# `bos_id` (dsa_core.models.LoadedModel.window_bos): each window of seqlen tokens is then <bos> followed by the
# next seqlen - 1 text tokens (calibration: at a random position), the text's own leading <bos> dropped first.


def _text_ids(ids: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """The text's tokens without the leading <bos> the tokenizer added, when windows get their own."""
    return ids[1:] if bos_id is not None and ids.numel() and int(ids[0]) == bos_id else ids


def _with_bos(body: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(n, m) text tokens -> (n, m + 1) windows that start with <bos>."""
    return torch.cat([body.new_full((body.shape[0], 1), bos_id), body], dim=1)


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int,
                        bos_id: int | None = None) -> torch.Tensor:
    """N random windows of seqlen tokens, seeded, as (nsamples, seqlen); windows may overlap. With `bos_id`,
    each window is <bos> and seqlen - 1 text tokens."""
    if nsamples < 1 or seqlen < 2:
        raise DataError("Calibration needs at least one sample and a sequence length of at least 2.")
    ids = _text_ids(ids, bos_id)
    span = seqlen - (bos_id is not None)  # text tokens per window
    if ids.numel() <= span:
        raise DataError(
            f"The calibration text has {ids.numel()} tokens, too short for windows of {seqlen}; "
            "use a shorter --seqlen or a longer text."
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - span - 1) for _ in range(nsamples)]
    windows = torch.stack([ids[s : s + span] for s in starts])
    return windows if bos_id is None else _with_bos(windows, bos_id)


def eval_windows(ids: torch.Tensor, seqlen: int, limit: int | None = None, bos_id: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of seqlen tokens from the start, tail dropped, optionally only the first `limit`.
    With `bos_id`, each window is <bos> and the next seqlen - 1 text tokens (text tokens still non-overlapping)."""
    if bos_id is not None and seqlen < 2:
        raise DataError("Windows that start with <bos> need a sequence length of at least 2.")
    ids = _text_ids(ids, bos_id)
    span = seqlen - (bos_id is not None)  # text tokens per window
    n = ids.numel() // span
    if n == 0:
        raise DataError(f"The evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}.")
    if limit is not None:
        if limit < 1:
            raise DataError("The number of evaluation windows must be at least 1.")
        n = min(n, limit)
    windows = ids[: n * span].view(n, span)
    return windows if bos_id is None else _with_bos(windows, bos_id)
