"""A search's study (dsa_core.studies): its function space, and resuming it by name from its storage, which
keeps its configuration (an older one too), refuses another configuration and says when no study has that name."""

import pytest

from dsa_core import functions, search
from dsa_core.errors import ConfigError
from dsa_core.models import load_model
from dsa_core.search_config import SearchConfig
from dsa_core.session import PruningSession
from dsa_core.studies import create_study, load_study, search_space
from tests.test_search import QUICK, texts


@pytest.fixture(scope="module")
def session():
    return PruningSession(load_model("random:tiny", device="cpu"), nsamples=2, seqlen=64, data_source="local")


def test_search_space_has_one_categorical_per_slot_and_lambda():
    space = search_space(SearchConfig(lam_range=(0.05, 0.2)))
    assert set(space) == set(functions.slot_choices()) | {"lam"}
    assert (space["lam"].low, space["lam"].high) == (0.05, 0.2)


def test_resume_continues_a_saved_study(session, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    cfg = SearchConfig(**QUICK, budget_candidates=5, study="resume-me", seed=3).validate()
    search.run_search(session, cfg, create_study(cfg, url))
    study, saved = load_study("resume-me", url)
    assert saved.population == 4 and saved.seed == 3
    saved.budget_candidates = 9
    result = search.run_search(session, saved, study)
    assert len(set(texts(study))) == 9
    assert result.evaluated == 4  # the first five came from the saved study, not re-evaluated


def test_a_study_saved_before_newer_settings_existed_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = SearchConfig(**QUICK, budget_candidates=5, study="old").validate()
    study = create_study(cfg, url)
    older = {k: v for k, v in study.user_attrs["config"].items() if k not in ("initial", "preselect")}
    study.set_user_attr("config", older)  # as a version without these settings saved it
    resumed, saved = load_study("old", url)
    assert saved.preselect == SearchConfig().preselect and resumed.study_name == "old"


def test_resume_with_another_configuration_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    create_study(SearchConfig(**QUICK, study="s", budget_candidates=3), url)
    with pytest.raises(ConfigError, match="another configuration"):
        create_study(SearchConfig(**{**QUICK, "sparsity": 0.5}, study="s", budget_candidates=3), url)


def test_missing_study_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="No study named"):
        load_study("nope", f"sqlite:///{tmp_path / 'x.db'}")
