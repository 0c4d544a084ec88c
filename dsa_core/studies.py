"""A search's Optuna study: created or resumed by name in a SQLAlchemy storage (the history database, so workers can
join), with the sampler and pruner its configuration asks for, and the configuration kept in the study so that a
worker or a resumed run needs only the name. A hybrid's refinements sit beside it as studies named after it."""

from __future__ import annotations

import uuid

import optuna

from dsa_core import workers as W
from dsa_core.errors import ConfigError
from dsa_core.evolution import EvolutionSampler
from dsa_core.levels import LevelSwitchSampler
from dsa_core.search_config import SearchConfig
from dsa_core.selection import RecentHalvingPruner
from dsa_core.spaces import function_distributions, function_text

REFINE_SUFFIX = ":refine"  # a hybrid search's second study is named after its first


def search_space(cfg: SearchConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The function space's distributions (the allocation space's depend on the model: see dsa_core.spaces)."""
    return function_distributions(cfg.lam_range)


def _comparable(cfg: SearchConfig, **overrides) -> dict:
    """A configuration as resuming compares it: budgets may change between runs, and so may the device (a worker's
    GPU, the web app's), a hybrid's refinement starts from whatever function is best by then, and settings added
    since a study was saved take their defaults (through SearchConfig.from_dict)."""
    skip = ("budget_candidates", "budget_seconds", "start", "device")
    return {k: v for k, v in {**cfg.to_dict(), **overrides}.items() if k not in skip}


def last_stage_only(cfg: SearchConfig) -> bool:
    """Whether every candidate is measured at the last stage alone: CMA-ES's update weighs a whole generation, which
    a staged selection would leave to the cheap stages (those rank an allocation's near neighbours poorly)."""
    return cfg.space == "allocation" and cfg.refiner == "cma"


def _sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    if cfg.space == "allocation" and cfg.refiner == "cma":  # its start is the first trial, enqueued (see spaces)
        return optuna.samplers.CmaEsSampler(seed=cfg.seed, n_startup_trials=1, warn_independent_sampling=False)
    if cfg.space == "allocation":  # a hybrid's first study searches functions
        return LevelSwitchSampler(parents=cfg.parents, seed=cfg.seed)
    if cfg.sampler == "ga":
        return EvolutionSampler(search_space(cfg), population=cfg.population, mutation=cfg.mutation,
                                initial=cfg.initial, preselect=cfg.preselect, seed=cfg.seed, key=function_text)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=cfg.population, crossover=optuna.samplers.nsgaii.UniformCrossover(), seed=cfg.seed,
            mutation_prob=cfg.mutation,
        )
    return optuna.samplers.RandomSampler(seed=cfg.seed)


def _pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    """Staged selection: a candidate measured at stage s reports at step promote**s, and goes on when it is among
    the best 1/promote of the latest candidates measured at that stage (dsa_core.selection)."""
    if len(cfg.stage_windows()) == 1 or last_stage_only(cfg):
        return optuna.pruners.NopPruner()
    return RecentHalvingPruner(cfg.promote)


def create_study(cfg: SearchConfig, storage: str | optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """A new or existing study (resume by name). Its configuration is kept in the study itself, so that
    workers and resumed runs need only the name and the storage URL."""
    name = cfg.study or f"dsa-{uuid.uuid4().hex[:8]}"
    if isinstance(storage, str) or storage is None:
        storage = W.open_storage(storage)
    study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(cfg), pruner=_pruner(cfg),
                                direction="minimize", load_if_exists=True)
    saved = study.user_attrs.get("config")
    if saved is None:
        cfg.study = name
        study.set_user_attr("config", cfg.to_dict())
    elif _comparable(SearchConfig.from_dict(saved)) != _comparable(cfg, study=name):
        raise ConfigError(f"Study '{name}' exists with another configuration; resume it with the same settings.")
    return study


def load_study(name: str, storage: str | optuna.storages.BaseStorage) -> tuple[optuna.Study, SearchConfig]:
    # A URL handed to Optuna itself would open it without the workers' heartbeats.
    opened = W.open_storage(storage) if isinstance(storage, str) else storage
    try:
        summary = optuna.load_study(study_name=name, storage=opened)
    except KeyError as e:
        where = storage if isinstance(storage, str) else "the study storage"
        raise ConfigError(f"No study named '{name}' in {where}.") from e
    cfg = SearchConfig.from_dict(summary.user_attrs["config"])
    return create_study(cfg, opened), cfg


def refine_name(study: str, restart: int = 0) -> str:
    """The study of a hybrid's refinement from its `restart`-th start (0: the first), named after the hybrid's."""
    return study + REFINE_SUFFIX + (str(restart + 1) if restart else "")
