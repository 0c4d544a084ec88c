import pytest
import torch

from dsa_core import data
from dsa_core.errors import ConfigError, DataError, ModelError
from dsa_core.models import LoadedModel
from dsa_core.structural.training import StructuralConfig, train_selection

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ids(tiny):
    return data.tokenize(tiny.tokenizer, data.load_text("wikitext2", "train", "local").text[:100_000])


def quick(**changes) -> StructuralConfig:
    return StructuralConfig(**{"model": "random:tiny", "steps": 6, "batch_size": 2, "seqlen": 32, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"target_ratio": 0.0}, "outside"), ({"target_ratio": 1.0}, "outside"), ({"steps": 0}, "steps"),
    ({"seqlen": 8}, "at least 16"), ({"lr": 0.0}, "learning rate"), ({"temperature": 0.0}, "temperature"),
    ({"eval_windows": 0}, "eval-windows"), ({"data_source": "web"}, "data source"),
    ({"calib": "/no/such/file.txt"}, "neither"), ({"max_train_seconds": 0.0}, "time limit"),
])
def test_bad_settings_are_refused(changes, message):
    with pytest.raises((ConfigError, DataError), match=message):
        quick(**changes).validate()


def test_config_round_trips_through_a_dict():
    cfg = quick(target_ratio=0.55, lam=4.0)
    assert StructuralConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="Unknown"):
        StructuralConfig.from_dict({**cfg.to_dict(), "sparsity": 0.5})


def test_training_keeps_the_model_frozen_and_hits_the_budget(tiny, ids):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    points = []
    result = train_selection(tiny, ids, quick(target_ratio=0.6), on_step=points.append)
    assert [p["step"] for p in result.curve] == list(range(1, 7)) and points == result.curve
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.model.modules())
    assert result.selection.ratio == pytest.approx(0.6, abs=0.01)
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_the_budget_term_drives_the_sampled_ratio_to_the_target(tiny, ids):
    result = train_selection(tiny, ids, quick(target_ratio=0.5, steps=20, lr=0.02, batch_size=1))
    ratios = [p["ratio"] for p in result.curve]
    assert ratios[0] > 0.95
    assert sum(ratios[-5:]) / 5 == pytest.approx(0.5, abs=0.05)
    assert result.curve[-1]["reg"] < result.curve[0]["reg"] / 2


def test_training_is_reproducible(tiny, ids):
    a = train_selection(tiny, ids, quick(steps=3))
    b = train_selection(tiny, ids, quick(steps=3))
    assert [p["loss"] for p in a.curve] == pytest.approx([p["loss"] for p in b.curve], rel=1e-5)
    assert (a.selection.widths == b.selection.widths).all()


def test_the_time_limit_stops_training_early(tiny, ids):
    result = train_selection(tiny, ids, quick(steps=50, max_train_seconds=1e-9))
    assert len(result.curve) == 1
    assert result.selection.ratio == pytest.approx(0.7, abs=0.01)


def test_a_short_text_and_other_architectures_are_refused(tiny):
    with pytest.raises(ConfigError, match="too short"):
        train_selection(tiny, torch.arange(20), quick())
    other = LoadedModel(tiny.model, tiny.tokenizer, "x", "gpt2", tiny.device, tiny.dtype)
    with pytest.raises(ModelError, match="LLaMA"):
        train_selection(other, torch.arange(1000), quick())


def test_extra_baselines_are_named_from_the_registry():
    assert StructuralConfig(extra_baselines=["hypernet", "shortgpt"]).validate().extra_baselines == ["hypernet",
                                                                                                     "shortgpt"]
    with pytest.raises(ConfigError, match="Unknown baseline 'slicegpt'"):
        StructuralConfig(extra_baselines=["slicegpt"]).validate()
    assert StructuralConfig.from_dict({"baseline": True}).extra_baselines == []  # configs stored before the field
