"""dsa_core/settings.py: a setting declared once gives the same option to every command and bench, the same message
from every configuration, and stored configurations of earlier versions still load."""

import argparse

import optuna
import pytest

from bench.setup_options import add_setup_options, setup_config
from cli.main import build_parser
from dsa_core.config import EvalConfig
from dsa_core.data import SOURCES
from dsa_core.errors import ConfigError
from dsa_core.export import SparsityProfile
from dsa_core.models import DTYPES
from dsa_core.search_config import SearchConfig
from dsa_core.settings import SETUP, setting, setup_of
from dsa_core.structural.training import StructuralConfig
from dsa_core.studies import create_study

CONFIGS = (EvalConfig, SearchConfig, StructuralConfig)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions if a.option_strings}


def commands() -> dict[str, dict[str, argparse.Action]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: options(p) for name, p in sub.choices.items()}


@pytest.mark.parametrize("flag, choices", [("--data-source", list(SOURCES)), ("--dtype", [*DTYPES, "auto"])])
def test_a_shared_setting_is_the_same_option_in_every_command_and_bench(flag, choices):
    bench = argparse.ArgumentParser()
    add_setup_options(bench)
    taking = {name: opts[flag] for name, opts in commands().items() if flag in opts}
    assert set(taking) == {"evaluate", "search", "export", "structural"}
    for action in [*taking.values(), options(bench)[flag]]:
        assert list(action.choices) == choices  # structural's --dtype takes fp64 too
        assert action.help == taking["evaluate"].help
    assert {a.default for a in taking.values()} == {setting(EvalConfig, flag[2:].replace("-", "_")).default}
    assert options(bench)["--data-source"].default == "local"  # a bench's own default, not its own declaration


def test_bench_options_make_the_config_the_cli_would():
    bench = argparse.ArgumentParser()
    add_setup_options(bench)
    cfg = setup_config(bench.parse_args(["--dtype", "fp64", "--nsamples", "4", "--data-source", "hub"]), sparsity=0.6)
    assert (cfg.dtype, cfg.nsamples, cfg.data_source, cfg.sparsity) == ("fp64", 4, "hub", 0.6)


def test_search_takes_the_batch_size_it_offers():
    args = build_parser().parse_args(["search", "--batch-size", "2", "--budget-candidates", "5"])
    assert args.batch_size == 2 and setup_of(SearchConfig(batch_size=2))["batch_size"] == 2


@pytest.mark.parametrize("change, words", [
    ({"data_source": "web"}, "Unknown data source 'web'; choose one of auto, hub, local."),
    ({"dtype": "fp8"}, "Unknown dtype 'fp8'"),
    ({"batch_size": 0}, "--batch-size must be at least 1; got 0."),
    ({"seqlen": 8}, "--seqlen must be at least 16; got 8."),
    ({"calib": "/no/such/file.txt"}, "neither a known dataset"),
])
def test_an_invalid_shared_setting_gives_one_message_from_every_config(change, words):
    messages = set()
    for config in CONFIGS:
        with pytest.raises(Exception) as refused:
            config(**change).validate()
        messages.add(str(refused.value))
    assert len(messages) == 1 and words in messages.pop()


@pytest.mark.parametrize("config", [EvalConfig, SearchConfig])
def test_one_sparsity_rule(config):
    for bad in (-0.1, 0.995, 1.0):
        with pytest.raises(ConfigError, match=r"outside \[0, 0.99\]"):
            config(sparsity=bad).validate()
    config(sparsity=0.99).validate()


def test_an_exported_profile_keeps_the_same_rule():
    with pytest.raises(ConfigError, match=r"outside \[0, 0.99\]"):
        SparsityProfile("uniform", [0.5], "wanda", "unstructured", 1.2).validate()
    with pytest.raises(ConfigError, match="Unknown metric 'snip'"):
        SparsityProfile("uniform", [0.5], "snip", "unstructured", 0.5).validate()


def test_every_config_holds_the_shared_setup_it_declares():
    for config in (EvalConfig, SearchConfig):
        assert set(setup_of(config())) == set(SETUP)
    assert setting(StructuralConfig, "batch_size").default == 4  # training windows per step: its own default


# Dicts as the previous versions wrote them (history records, shared files, studies' user attributes).
OLD_EVAL = {"model": None, "metric": "wanda", "allocation": "owl", "sparsity": 0.7, "pattern": "unstructured",
            "calib": "wikitext2", "nsamples": 128, "seqlen": 2048, "eval": "wikitext2", "eval_windows": 4, "seed": 0,
            "mode": "sequential", "dense": False, "device": None, "dtype": None, "data_source": "auto",
            "batch_size": None, "tasks": ["boolq"], "tasks_limit": None, "tasks_data": None}
OLD_SEARCH = {"model": "random:tiny", "metric": "wanda", "sparsity": 0.7, "calib": "wikitext2", "nsamples": 2,
              "seqlen": 64, "seed": 0, "data_source": "local", "device": None, "dtype": None, "space": "function",
              "granularity": "block", "fitness": "ppl", "fidelity": "", "last_stage": "masked", "promote": 4,
              "level_step": 0.01, "parents": 1, "start": "uniform", "hybrid_split": 0.5, "rerank_tokens": 0,
              "sampler": "ga", "population": 24, "mutation": None, "initial": None, "preselect": 16,
              "budget_candidates": 200, "budget_seconds": None, "fitness_windows": 8, "zeroshot_rows": 200,
              "lam_range": [0.02, 0.3], "top_k": 3, "final_eval_windows": None, "study": "old"}
OLD_STRUCTURAL = {"model": None, "target_ratio": 0.7, "steps": 100, "batch_size": 1, "seqlen": 256, "lr": 0.01,
                  "weight_decay": 0.05, "lam": 16.0, "temperature": 0.4, "offset": 3.0, "calib": "wikitext2",
                  "data_source": "auto", "eval_seqlen": 512, "eval_windows": 16, "baseline": True,
                  "extra_baselines": ["shortgpt"], "baseline_samples": 8, "max_train_seconds": None, "align": 8,
                  "seed": 0, "device": "cpu", "dtype": None}


def test_old_stored_dicts_still_load():
    ev = EvalConfig.from_dict(OLD_EVAL)
    assert ev.tasks == ("boolq",) and EvalConfig.from_dict(ev.to_dict()) == ev
    search = SearchConfig.from_dict(OLD_SEARCH)
    assert search.batch_size is None and search.lam_range == (0.02, 0.3)  # written before search took a batch size
    structural = StructuralConfig.from_dict(OLD_STRUCTURAL)
    assert structural.to_dict() == {**OLD_STRUCTURAL, "prune_heads": False}  # written before heads could be pruned


def test_a_study_saved_before_search_took_a_batch_size_resumes():
    storage = optuna.storages.InMemoryStorage()
    create_study(SearchConfig.from_dict(OLD_SEARCH), storage).set_user_attr("config", OLD_SEARCH)
    create_study(SearchConfig.from_dict(OLD_SEARCH), storage)  # the same settings: no "another configuration"
