import random

import pytest
import torch

from dsa_core import data
from dsa_core.errors import DataError


def test_shipped_wikitext2_test_split_is_found_with_provenance():
    text = data.load_text("wikitext2", "test", "local")
    assert text.origin.startswith("local:") and "wiki.test.raw" in text.origin and "sha256:4f3e427e4aff" in text.origin
    assert "\r" not in text.text and text.text.startswith(" = Robert Boulter = ")
    assert text.text.count("\n\n") == 2890  # 2,891 non-empty rows joined with "\n\n"


def test_calibration_never_reads_the_test_split():
    text = data.load_text("wikitext2", "train", "local")
    assert "wiki.valid.tokens" in text.origin and not text.text.startswith("\ufeff")


def test_c4_offline_is_a_clear_error():
    with pytest.raises(DataError, match="C4 is only available from the Hugging Face hub"):
        data.load_text("c4", "train", "local")


def test_text_file_by_path_and_missing_file(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("hello world " * 50)
    assert data.load_text(str(f)).text.startswith("hello")
    with pytest.raises(DataError, match="neither a known dataset"):
        data.load_text(str(tmp_path / "missing.txt"))
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DataError, match="is not UTF-8 text"):
        data.load_text(str(binary))


def test_calibration_windows_are_seeded_and_in_range():
    ids = torch.arange(1000)
    a = data.calibration_windows(ids, 5, 100, seed=3)
    b = data.calibration_windows(ids, 5, 100, seed=3)
    c = data.calibration_windows(ids, 5, 100, seed=4)
    assert a.shape == (5, 100) and torch.equal(a, b) and not torch.equal(a, c)
    assert ((a[:, 1:] - a[:, :-1]) == 1).all()  # contiguous windows


def test_calibration_text_too_short_is_refused():
    with pytest.raises(DataError, match="too short for windows of 512"):
        data.calibration_windows(torch.arange(300), 4, 512, seed=0)


def test_eval_windows_drop_the_tail_and_cap():
    ids = torch.arange(1050)
    assert data.eval_windows(ids, 100).shape == (10, 100)
    assert data.eval_windows(ids, 100, limit=3).shape == (3, 100)
    with pytest.raises(DataError):
        data.eval_windows(torch.arange(50), 100)


BOS = 7


def test_eval_windows_with_bos_start_each_window_with_it_and_keep_text_tokens_non_overlapping():
    ids = torch.cat([torch.tensor([BOS]), torch.arange(100, 150)])  # as tokenised: <bos>, then 50 text tokens
    w = data.eval_windows(ids, 10, bos_id=BOS)
    assert w.shape == (5, 10) and (w[:, 0] == BOS).all()  # 50 text tokens = 5 windows of <bos> + 9, tail dropped
    assert torch.equal(w[:, 1:].flatten(), torch.arange(100, 145))  # the text's own <bos> is not repeated
    assert torch.equal(data.eval_windows(ids, 10, limit=2, bos_id=BOS), w[:2])
    assert torch.equal(data.eval_windows(ids[1:], 10, bos_id=BOS), w)  # a text without <bos> gives the same
    # without bos_id: the literature's protocol, untouched (only the first window starts with <bos>)
    assert torch.equal(data.eval_windows(ids, 10), ids[:50].view(5, 10))
    with pytest.raises(DataError, match="fewer than one window of 10"):
        data.eval_windows(ids[:9], 10, bos_id=BOS)
    with pytest.raises(DataError, match="at least 2"):
        data.eval_windows(ids, 1, bos_id=BOS)


def test_calibration_windows_with_bos():
    ids = torch.cat([torch.tensor([BOS]), torch.arange(1000, 2000)])
    a = data.calibration_windows(ids, 5, 100, seed=3, bos_id=BOS)
    assert a.shape == (5, 100) and (a[:, 0] == BOS).all() and torch.equal(a, data.calibration_windows(
        ids, 5, 100, seed=3, bos_id=BOS))
    body = a[:, 1:]
    assert ((body[:, 1:] - body[:, :-1]) == 1).all() and (body >= 1000).all()  # contiguous text, never the <bos>
    # without bos_id: unchanged, the windows of the literature's code (random starts over all ids, <bos> included)
    rng = random.Random(3)
    starts = [rng.randint(0, ids.numel() - 100 - 1) for _ in range(5)]
    assert torch.equal(data.calibration_windows(ids, 5, 100, seed=3), torch.stack([ids[s : s + 100] for s in starts]))
    with pytest.raises(DataError, match="too short"):
        data.calibration_windows(ids[:100], 4, 100, seed=0, bos_id=BOS)  # 99 text tokens: not one window of 99 + 1


def test_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_dir() == tmp_path
    with pytest.raises(DataError, match="not found"):
        data.load_text("wikitext2", "test", "local")
