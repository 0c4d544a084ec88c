"""Tests of dsa_core/zeroshot: the release-format readers, task discovery, lm-eval scoring checked against a
direct unbatched computation, the EvalConfig/pipeline/CLI hook, the comparison of allocations, the report and
the figures. Unit tests use the tiny random model and tests/fixtures/zeroshot; one integration test runs
SmolLM2 on the shipped PIQA validation split."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError, DataError
from dsa_core.zeroshot import PAPER_TASKS, TASKS, formats, parse_tasks
from dsa_core.zeroshot.tasks import check_sources, find_files, use_hub

FIXTURES = Path(__file__).parent / "fixtures" / "zeroshot"
SUPERGLUE = FIXTURES / "superglue"
MULTIPLE_INPUT = {"winogrande"}  # one continuation after several contexts: the gold is a context, not a choice
WITHOUT_NORM = {"boolq", "rte", "winogrande"}  # lm-eval's YAMLs for these list acc only


# --- names, files, readers -----------------------------------------------------------------------------------

def test_parse_tasks_orders_expands_and_refuses():
    assert parse_tasks("piqa, ARC-E,obqa,piqa") == ("piqa", "arc_easy", "openbookqa")
    assert parse_tasks(["paper"]) == PAPER_TASKS
    with pytest.raises(ConfigError, match="mmlu"):
        parse_tasks("boolq,mmlu")
    with pytest.raises(ConfigError):
        parse_tasks(" , ")


def test_every_task_is_found_in_its_release_layout():
    for name, spec in TASKS.items():
        files = find_files(spec, FIXTURES)
        assert files is not None, name
        assert all(f.is_file() and FIXTURES in f.parents for f in files)
    assert find_files(TASKS["arc_easy"], FIXTURES)[0].name == "ARC-Easy-Test.jsonl"
    assert find_files(TASKS["rte"], FIXTURES)[0].suffix == ".tsv"
    assert find_files(TASKS["boolq"], SUPERGLUE)[0].name == "val.jsonl"


def test_missing_files_are_refused_before_any_model(tmp_path):
    check_sources("paper,piqa", FIXTURES)
    with pytest.raises(DataError, match="HellaSwag.*'hellaswag'"):
        check_sources("boolq,hellaswag", SUPERGLUE)
    # The papers' seven asked as a whole: what is absent is reported missing, not refused.
    assert set(check_sources("paper", SUPERGLUE)) == set(PAPER_TASKS) - {"boolq", "rte"}
    with pytest.raises(DataError, match="does not exist"):
        check_sources("piqa", tmp_path / "nowhere")


def test_source_choice():
    assert not use_hub("auto", FIXTURES)  # a folder named by the user wins
    assert not use_hub("local", None)
    assert not use_hub("auto", None)  # conftest sets HF_HUB_OFFLINE
    assert use_hub("hub", None)
    with pytest.raises(ConfigError):
        use_hub("ftp", None)


def test_readers_map_release_fields_to_lm_eval_schema():
    google = formats.boolq(FIXTURES / "boolq" / "dev.jsonl")
    assert [r["label"] for r in google] == [1, 0, 1, 1] and set(google[0]) == {"question", "passage", "label"}
    assert google[0]["passage"].startswith("Pacific Ocean -- The Pacific Ocean is")  # SuperGLUE's "title -- passage"
    assert [r["label"] for r in formats.boolq(SUPERGLUE / "boolq" / "BoolQ" / "val.jsonl")] == [0, 1, 1]
    glue = formats.rte(FIXTURES / "rte" / "RTE" / "dev.tsv")
    assert [r["label"] for r in glue] == [0, 1, 1, 0] and '"record profits"' in glue[2]["sentence1"]
    sg = formats.rte(SUPERGLUE / "rte" / "RTE" / "val.jsonl")
    assert sg[1] == {"sentence1": "Heavy rain flooded the streets of the town on Tuesday.",
                     "sentence2": "The town had a drought on Tuesday.", "label": 1}
    arc = formats.arc(FIXTURES / "arc" / "ARC-V1-Feb2018-2" / "ARC-Easy" / "ARC-Easy-Test.jsonl")
    assert arc[2]["choices"] == {"text": ["gas", "liquid", "solid"], "label": ["1", "2", "3"]}
    assert arc[2]["question"] == "Which state of matter has a definite shape?" and arc[2]["answerKey"] == "3"
    obqa = formats.openbookqa(FIXTURES / "openbookqa" / "OpenBookQA-V1-Sep2018" / "Data" / "Main" / "test.jsonl")
    assert obqa[0]["question_stem"] == "A magnet will stick to" and obqa[0]["choices"]["label"][1] == "B"
    assert formats.hellaswag(FIXTURES / "hellaswag" / "hellaswag_val.jsonl")[0]["label"] == "2"
    assert formats.winogrande(FIXTURES / "winogrande" / "winogrande_1.1" / "dev.jsonl")[1]["answer"] == "2"
    piqa = formats.piqa(FIXTURES / "piqa" / "valid.jsonl", FIXTURES / "piqa" / "valid-labels.lst")
    assert [r["label"] for r in piqa] == [0, 1, 1, 1] and piqa[1]["goal"] == "dresser"


def test_readers_say_what_is_wrong(tmp_path):
    labels = tmp_path / "valid-labels.lst"
    labels.write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 4 examples"):
        formats.piqa(FIXTURES / "piqa" / "valid.jsonl", labels)
    hub_style = tmp_path / "ARC-Easy-Test.jsonl"
    hub_style.write_text(json.dumps({"question": "Why?", "choices": {"text": ["a"], "label": ["A"]},
                                     "answerKey": "A"}) + "\n")
    with pytest.raises(DataError, match="original release format"):
        formats.arc(hub_style)
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n")
    with pytest.raises(DataError, match="contradiction"):
        formats.rte(bad)
    broken = tmp_path / "dev.jsonl"
    broken.write_text('{"sentence": "x _ y",\n')
    with pytest.raises(DataError, match="line 1"):
        formats.winogrande(broken)


# --- scoring -------------------------------------------------------------------------------------------------

def direct_loglikelihood(lm, context: str, continuation: str) -> float:
    """log P(continuation | context), one unpadded sequence: lm-eval's split of the text into tokens (trailing
    spaces of the context move to the continuation; the continuation's tokens are those of the whole text
    after the context's), summed log-softmax of the logits that predict them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = lm.tokenizer.encode(context + continuation, add_special_tokens=False)
    start = len(lm.tokenizer.encode(context, add_special_tokens=False))
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(start, len(whole))))


def check_against_direct(lm, name: str, task: dict) -> None:
    """Every log-likelihood equals the direct one; acc and acc_norm follow from them by lm-eval's definitions."""
    accs, norms = [], []
    for s in task["samples"]:
        lls = np.array([direct_loglikelihood(lm, c, x) for c, x in s["requests"]])
        np.testing.assert_allclose(s["loglikelihoods"], lls, rtol=0, atol=2e-3)
        gold = int(s["doc"]["answer"]) - 1 if name in MULTIPLE_INPUT else s["target"]
        accs.append(float(np.argmax(lls) == gold))
        assert s["acc"] == accs[-1]
        if name not in WITHOUT_NORM:
            lengths = np.array([len(x) - 1 for _, x in s["requests"]])  # the choice, without lm-eval's " " delimiter
            norms.append(float(np.argmax(lls / lengths) == gold))
            assert s["acc_norm"] == norms[-1]
    assert task["n"] == len(task["samples"])
    assert task["acc"] == pytest.approx(np.mean(accs))
    if name in WITHOUT_NORM:
        assert task["acc_norm"] is None and task["acc_norm_stderr"] is None
    else:
        assert task["acc_norm"] == pytest.approx(np.mean(norms))


@pytest.fixture(scope="module")
def fixture_run(tiny):
    from dsa_core.zeroshot.harness import evaluate_tasks

    seen = []
    # Batches of 3 mix requests of different lengths, so right padding is exercised.
    result = evaluate_tasks(tiny, list(TASKS), data_root=FIXTURES, batch_size=3, keep_samples=True,
                            progress=lambda phase, done, total: seen.append((phase, done, total)))
    return result, seen


def test_batched_scores_equal_direct_unbatched_ones(tiny, fixture_run):
    result, _ = fixture_run
    assert list(result["tasks"]) == list(TASKS)
    for name, task in result["tasks"].items():
        check_against_direct(tiny, name, task)
        assert task["n"] == task["n_total"] == len(TASKS[name].reader(*find_files(TASKS[name], FIXTURES)))
        assert task["split"] == TASKS[name].split and task["source"].startswith(f"local:{FIXTURES}")
    assert result["mean_acc"] == pytest.approx(np.mean([t["acc"] for t in result["tasks"].values()]))
    assert result["protocol"]["num_fewshot"] == 0 and result["protocol"]["harness"].startswith("lm-evaluation")


def test_prompts_are_lm_eval_s(fixture_run):
    tasks = fixture_run[0]["tasks"]
    assert tasks["piqa"]["samples"][0]["requests"][0][0].startswith("Question: How do I ready a guinea pig cage")
    assert tasks["rte"]["samples"][0]["requests"][1] == [
        "The cat sat on the mat while the dog slept by the fire.\nQuestion: The dog was sleeping. True or False?"
        "\nAnswer:", " False"]
    # HellaSwag's preprocessing strips WikiHow's bracketed markers.
    assert "[" not in tasks["hellaswag"]["samples"][1]["requests"][0][0]
    wino = tasks["winogrande"]["samples"][0]["requests"]
    assert [c for c, _ in wino] == ["The trophy doesn't fit into the brown suitcase because the trophy",
                                    "The trophy doesn't fit into the brown suitcase because the suitcase"]


def test_progress_reaches_every_task_s_end(fixture_run):
    _, seen = fixture_run
    ends = {phase for phase, done, total in seen if done == total}
    assert ends == {f"zero-shot {spec.title}" for spec in TASKS.values()}
    assert all(0 < done <= total for _, done, total in seen)


def test_limit_takes_the_first_examples_and_shows_the_count(tiny, fixture_run):
    from dsa_core.zeroshot.harness import evaluate_tasks

    limited = evaluate_tasks(tiny, "boolq,arc_easy", data_root=FIXTURES, limit=2, keep_samples=True)
    for name in ("boolq", "arc_easy"):
        task, full = limited["tasks"][name], fixture_run[0]["tasks"][name]
        assert (task["n"], task["n_total"]) == (2, full["n_total"])
        np.testing.assert_allclose([s["loglikelihoods"] for s in task["samples"]],
                                   [s["loglikelihoods"] for s in full["samples"][:2]], atol=2e-3)
    with pytest.raises(ConfigError):
        evaluate_tasks(tiny, "boolq", data_root=FIXTURES, limit=0)


def test_superglue_formats_score_too(tiny):
    from dsa_core.zeroshot.harness import evaluate_tasks

    result = evaluate_tasks(tiny, "boolq,rte", data_root=SUPERGLUE, keep_samples=True)
    for name, task in result["tasks"].items():
        assert task["n"] == 3 and "superglue" in task["source"]
        check_against_direct(tiny, name, task)


def test_hub_config_is_lm_eval_s_own():
    from dsa_core.zeroshot.harness import task_config

    cfg, where = task_config(TASKS["piqa"], None)
    assert "custom_dataset" not in cfg and where == f"hub:{cfg['dataset_path']}/validation"
    cfg, where = task_config(TASKS["arc_challenge"], None)
    assert cfg["dataset_name"] == "ARC-Challenge" and where.endswith("/ARC-Challenge/test")


# --- configuration, pipeline, CLI, comparison ----------------------------------------------------------------

def tiny_config(**kw) -> EvalConfig:
    base = dict(model="random:tiny", device="cpu", nsamples=2, seqlen=32, eval_windows=1, data_source="local",
                tasks="rte,arc_easy", tasks_data=str(FIXTURES))
    return EvalConfig(**{**base, **kw}).validate()


def test_config_round_trip_and_checks():
    cfg = tiny_config(tasks="obqa, rte", tasks_limit=5)
    assert cfg.tasks == ("openbookqa", "rte")
    assert EvalConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert EvalConfig().validate().tasks == ()
    assert EvalConfig.from_dict(json.loads(json.dumps(EvalConfig().to_dict()))) == EvalConfig()
    with pytest.raises(ConfigError):
        tiny_config(tasks_limit=0)
    with pytest.raises(ConfigError):
        tiny_config(tasks="squad")


def test_run_evaluation_carries_zero_shot_sections_that_history_can_store():
    from dsa_core.pipeline import Evaluation, run_evaluation
    from storage.records import to_json_object

    result = run_evaluation(tiny_config(dense=True, tasks_limit=2, mode="fast"))
    for section in (result.zeroshot, result.dense_zeroshot):
        assert list(section["tasks"]) == ["rte", "arc_easy"]
        assert all(t["n"] == 2 for t in section["tasks"].values())
        assert section["protocol"]["limit"] == 2
    assert result.timings["zeroshot"] >= result.zeroshot["seconds"] > 0
    stored = to_json_object(result.to_dict(), "results")
    assert stored["kind"] == "evaluation" and stored["zeroshot"]["tasks"]["rte"]["acc_norm"] is None
    assert to_json_object(Evaluation.from_dict(stored).to_dict(), "results") == stored  # the form is stable


def test_run_evaluation_refuses_missing_task_files_before_loading(tmp_path, monkeypatch):
    import dsa_core.pipeline as pipeline

    shutil.copytree(FIXTURES / "rte", tmp_path / "rte")
    monkeypatch.setattr(pipeline, "open_session", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(DataError, match="ARC-e"):
        pipeline.run_evaluation(tiny_config(tasks_data=str(tmp_path)))


def test_cli_prints_the_per_task_table(capsys):
    from cli.main import main

    code = main(["evaluate", "--model", "random:tiny", "--device", "cpu", "--nsamples", "2", "--seqlen", "32",
                 "--eval-windows", "1", "--data-source", "local", "--mode", "fast", "--allocation", "owl",
                 "--tasks", "rte,arc_c", "--tasks-limit", "1", "--tasks-data", str(FIXTURES)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out[out.index("zero-shot"):].splitlines()
    assert lines[1].split() == ["task", "n", "owl", "acc", "owl", "acc_norm"]
    assert lines[2].split()[:2] == ["RTE", "1"] and lines[2].split()[-1] == "-"
    assert lines[3].split()[:2] == ["ARC-c", "1"] and lines[4].split()[0] == "mean"


def test_cli_refuses_unknown_task(capsys):
    from cli.main import main

    assert main(["evaluate", "--model", "random:tiny", "--tasks", "piqa,trivia"]) == 2
    assert "trivia" in capsys.readouterr().err


def test_compare_allocations_prunes_each_from_dense(fresh_tiny):
    from dsa_core.reporter import Reporter
    from dsa_core.session import PruningSession
    from dsa_core.zeroshot.compare import compare_allocations

    session = PruningSession(fresh_tiny, nsamples=2, seqlen=32, data_source="local")
    dense = {k: v.clone() for k, v in fresh_tiny.model.state_dict().items()}
    cfg = tiny_config(tasks="winogrande", mode="fast")
    seen = []

    class Labels(Reporter):
        def on_event(self, row):
            seen.append(row.label)

    results = compare_allocations(session, cfg, extra=[("current", "owl:M=3,lambda=0.05")], reporter=Labels())
    assert list(results) == seen == ["dense", "uniform", "owl", "dsa preset", "current"]
    assert results["dense"]["achieved_sparsity"] == 0.0
    for label in ("uniform", "owl", "dsa preset", "current"):
        assert results[label]["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
        assert results[label]["tasks"]["winogrande"]["n"] == 4
    assert results["uniform"]["ratios"] == [0.5] * 4 and results["owl"]["ratios"] != results["uniform"]["ratios"]
    assert all(torch.equal(v, dense[k]) for k, v in fresh_tiny.model.state_dict().items())


# --- report and figures ---------------------------------------------------------------------------------------

def fake_result(tasks: dict[str, tuple[float, float | None, int]]) -> dict:
    return {"tasks": {n: {"acc": a, "acc_norm": b, "n": k, "acc_stderr": 0.01} for n, (a, b, k) in tasks.items()},
            "mean_acc": float(np.mean([a for a, _, _ in tasks.values()]))}


def test_report_table_keeps_acc_and_acc_norm_apart():
    from dsa_core.zeroshot.report import format_table, table

    results = {"dense": fake_result({"piqa": (0.7, 0.68, 200), "rte": (0.55, None, 200)}),
               "owl": fake_result({"piqa": (0.6, 0.61, 150)})}
    headers, rows = table(results)
    assert headers == ["task", "n", "dense acc", "dense acc_norm", "owl acc", "owl acc_norm"]
    assert rows[0] == ["PIQA", "150/200", 0.7, 0.68, 0.6, 0.61]
    assert rows[1] == ["RTE", "200", 0.55, None, None, None]
    assert rows[2] == ["mean", "", pytest.approx(0.625), None, 0.6, 0.61]
    text = format_table(results).splitlines()
    assert text[2].split() == ["RTE", "200", "0.550", "-", "-", "-"]


def test_figures_group_bars_by_task():
    from ui.zeroshot_figures import zeroshot_bars, zeroshot_table

    results = {"dense": fake_result({"piqa": (0.7, 0.68, 200), "boolq": (0.6, None, 200)}),
               "current": fake_result({"piqa": (0.62, 0.6, 200), "boolq": (0.58, None, 200)})}
    fig = zeroshot_bars(results)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.name for b in bars] == ["dense", "current"] and fig.layout.barmode == "group"
    assert list(bars[0].x) == ["PIQA", "BoolQ", "mean"] and list(bars[1].y) == [0.62, 0.58, pytest.approx(0.6)]
    chance = [t for t in fig.data if t.type == "scatter"][0]
    assert list(chance.y) == [0.5, 0.5, None]
    norm = zeroshot_bars(results, metric="acc_norm")
    assert list(norm.data[0].x) == ["PIQA"]  # BoolQ has no acc_norm: no bar, rather than acc in its place
    headers, rows = zeroshot_table(results)
    assert headers[:2] == ["task", "n"] and rows[0][:2] == ["PIQA", "200"]
    with pytest.raises(ValueError):
        zeroshot_bars(results, metric="f1")


def test_figures_mark_missing_tasks_and_give_the_mean_its_error():
    from ui.zeroshot_figures import task_sets, zeroshot_bars

    result = fake_result({"boolq": (0.6, None, 100), "arc_easy": (0.5, 0.4, 100)})
    result["tasks"]["arc_easy"]["acc_stderr"] = 0.02
    result["missing"] = {"hellaswag": "no local copy"}
    fig = zeroshot_bars({"dense": result})
    bar = fig.data[0]
    assert list(bar.x) == ["BoolQ", "ARC-e", "HellaSwag", "mean of 2 (HellaSwag missing)"]
    assert bar.y[2] is None and list(bar.error_y.array)[3] == pytest.approx(np.hypot(0.01, 0.02) / 2)
    assert [a.text for a in fig.layout.annotations] == ["missing"] and fig.layout.annotations[0].x == "HellaSwag"
    assert list(fig.data[1].y) == [0.5, 0.25, 0.25, None]  # chance: yes/no, four choices, four endings
    sets = task_sets({"hellaswag": "no file", "piqa": None})
    assert sets[0][1] == "paper" and sets[0][0].endswith("6 here, HellaSwag missing") and sets[1] == ("PIQA", "piqa")
    assert task_sets({})[0][0].endswith("OBQA)")  # all available: nothing said missing


# --- the real model ---------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_smollm2_on_piqa_is_above_chance(smollm2):
    from dsa_core.zeroshot.harness import evaluate_tasks

    result = evaluate_tasks(smollm2, "piqa", limit=50, source="local", keep_samples=True)
    piqa = result["tasks"]["piqa"]
    assert (piqa["n"], piqa["n_total"]) == (50, 1838)
    assert "sha256:93503cc97c67" in piqa["source"]
    assert piqa["acc"] > 0.6 and piqa["acc_norm"] > 0.6
    first = piqa["samples"][0]
    np.testing.assert_allclose(first["loglikelihoods"],
                               [direct_loglikelihood(smollm2, c, x) for c, x in first["requests"]], atol=2e-3)


def test_zero_shot_batch_shrinks_to_fit_a_large_vocabulary(tiny, monkeypatch):
    """lm-eval pads a batch to its longest row and keeps the logits and their float32 log-softmax at once: on a GPU
    the batch is what fits in LOGITS_MEMORY_SHARE of the free memory (Gemma's 262k-token vocabulary asked for 79 GiB
    at 64 rows), never more than asked, never below one row; on the CPU it is the batch asked for."""
    from dsa_core.zeroshot import harness

    model = harness._SessionLM(tiny, 16, lambda *a: None, "zero-shot")
    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    requests = [(("c", "x"), [1] * 30, [2] * 10), (("c", "y"), [1] * 5, [2])]  # longest row: 40 tokens
    assert model.rows_that_fit(requests) == 16  # CPU
    model._device = torch.device("cuda")
    row = 40 * vocab * harness.LOGIT_BYTES
    monkeypatch.setattr(harness, "free_memory", lambda device: int(5 * row / harness.LOGITS_MEMORY_SHARE))
    assert model.rows_that_fit(requests) == 5
    monkeypatch.setattr(harness, "free_memory", lambda device: 0)
    assert model.rows_that_fit(requests) == 1
    monkeypatch.setattr(harness, "free_memory", lambda device: 10**15)
    assert model.rows_that_fit(requests) == 16
