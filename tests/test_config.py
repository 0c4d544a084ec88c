import pytest

from dsa_core.config import EvalConfig
from dsa_core.errors import ConfigError


def test_round_trip_and_unknown_keys():
    cfg = EvalConfig(allocation="owl", sparsity=0.7, eval_windows=4).validate()
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="Unknown configuration keys: bogus"):
        EvalConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("kw", [dict(sparsity=1.0), dict(sparsity=0.995), dict(batch_size=-1), dict(batch_size=0),
                                dict(metric="snip"), dict(pattern="3:2"), dict(mode="slow"),
                                dict(pattern="4:8", sparsity=0.4), dict(nsamples=0), dict(eval_windows=0)])
def test_invalid_configs_are_refused(kw):
    with pytest.raises(ConfigError):
        EvalConfig(**kw).validate()


def test_nm_pattern_with_matching_target_is_fine():
    EvalConfig(pattern="2:4", sparsity=0.5).validate()
    EvalConfig(pattern="2:4", allocation="dense").validate()
