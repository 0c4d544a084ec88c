"""Tests of dsa_core/zeroshot/lm_eval_cli.py: the tasks written for lm-eval's own command line read the same
documents as the in-process harness, and the CLI run on the saved model gives the same scores and the same
log-likelihood of every choice (tiny random model, shipped task files)."""

import numpy as np
import pytest
import yaml

from dsa_core import data
from dsa_core.zeroshot.tasks import resolve_sources

TASKS = "rte,arc_challenge,winogrande,piqa"
pytestmark = pytest.mark.skipif(not (data.data_dir() / "rte" / "val.jsonl").is_file(), reason="no shipped task data")


def test_written_tasks_include_lm_eval_s_yaml_and_read_the_same_documents(tmp_path):
    from lm_eval.tasks import TaskManager

    from dsa_core.zeroshot import lm_eval_cli
    from dsa_core.zeroshot.harness import task_config
    from dsa_core.zeroshot.tasks import TASKS as SPECS

    sources = resolve_sources(TASKS, None, "local")
    names = lm_eval_cli.write_tasks(sources, tmp_path)
    assert names == {n: lm_eval_cli.PREFIX + n for n in sources.files}
    cfg = yaml.safe_load((tmp_path / "dsa_local_rte.yaml").read_text())
    assert cfg["include"].endswith("glue/rte/default.yaml") and cfg["dataset_path"] == "json"
    assert list(cfg["metadata"]["sources"].values())[0].startswith("ab990507bf5f")  # PROVENANCE's SHA-256
    cli = TaskManager(include_path=str(tmp_path), include_defaults=False)
    ours = TaskManager(include_defaults=False)
    for name, cli_name in names.items():
        theirs = cli.load([cli_name])["tasks"][cli_name]
        mine = ours.load([task_config(SPECS[name], sources.files[name])[0]])["tasks"][name]
        a, b = list(theirs.eval_docs), list(mine.eval_docs)
        assert len(a) == len(b) > 0
        for d, e in zip(a[:50], b[:50]):
            assert (theirs.doc_to_text(d), theirs.doc_to_choice(d), theirs.doc_to_target(d)) == (
                mine.doc_to_text(e), mine.doc_to_choice(e), mine.doc_to_target(e))


@pytest.mark.integration  # lm-eval's CLI in a subprocess indexes its 10k task files: a minute or more
def test_cli_scores_equal_the_in_process_harness(tiny, tmp_path):
    from dsa_core.zeroshot import lm_eval_cli
    from dsa_core.zeroshot.harness import evaluate_tasks

    ours = evaluate_tasks(tiny, TASKS, limit=6, source="local", batch_size=4, keep_samples=True)
    theirs = lm_eval_cli.run(tiny, resolve_sources(TASKS, None, "local"), tmp_path, batch_size=4, limit=6)
    rows, ok = lm_eval_cli.compare(ours, theirs)
    assert ok and len(rows) == 6  # acc for all four, acc_norm for ARC and PIQA
    assert all(t["n"] == 6 for t in theirs.values())
    gap = lm_eval_cli.max_loglikelihood_gap(ours, theirs)
    assert gap is not None and gap < 1e-4
    assert np.isfinite([ll for t in theirs.values() for lls in t["loglikelihoods"] for ll in lls]).all()
