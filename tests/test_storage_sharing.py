"""Tests of storage/sharing.py: export → import round trips, permalinks, and hostile files that must be
refused with a specific message while the database stays exactly as it was."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import (
    MAX_IMPORT_BYTES,
    AlreadyImported,
    History,
    ImportRefused,
    StorageError,
    experiment_id_from_url,
    export_experiment,
    export_to_file,
    import_experiment,
    import_file,
    open_database,
    permalink,
    read_document,
    shape_problem,
)
from tests.strategies import TEXT, json_values

CONFIG = {"model": "HuggingFaceTB/SmolLM2-135M", "metric": "wanda", "sparsity": 0.6, "allocation": "owl"}
RESULTS = {"ppl": 25.25, "ratios": [0.5, 0.7, 0.6], "generations": [{"generation": 0, "best": 30.5, "mean": 31.0},
                                                                     {"generation": 1, "best": 25.25, "mean": 27.0}],
           "flags": [True, False, None, -1.5e-3, "é"]}


@pytest.fixture
def history(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'history.db'}")
    yield History(db)
    db.close()


@pytest.fixture
def original(history):
    return history.save("search", CONFIG, name="OWL search", status="done", protocol={"eval": "wikitext2"},
                        results=RESULTS, environment={"torch": "2.13.0", "device": "cpu"}, tags=["owl"],
                        notes="shared with the team — ✓")


def rows(history: History) -> list:
    return [r.to_dict() for r in history.find(limit=None)]


def without_provenance(record) -> dict:
    d = record.to_dict()
    for key in ("id", "source", "tags"):
        d.pop(key)
    return d


def test_export_import_round_trip(history, original):
    data = export_experiment(history, original.id)
    doc = json.loads(data)
    assert set(doc) == {"format", "version", "experiment"} and doc["format"] == "sparsity-explorer/experiment"
    imported = import_experiment(history, data)
    assert imported.id != original.id and history.get(imported.id) == imported
    assert without_provenance(imported) == without_provenance(original)
    assert imported.tags == ["owl", "imported"]
    assert imported.source["original_id"] == original.id and imported.source["origin"] is None
    assert history.count() == 2


def test_file_round_trip_records_the_file_name(history, original, tmp_path):
    path = export_to_file(history, original.id, tmp_path / "owl.json")
    assert list(tmp_path.glob(".export-*")) == []
    imported = import_file(history, path)
    assert imported.source["origin"] == "owl.json"
    assert without_provenance(imported) == without_provenance(original)


def test_a_re_import_is_recognised_when_asked(history, original, tmp_path):
    path = export_to_file(history, original.id, tmp_path / "owl.json")
    with pytest.raises(AlreadyImported, match=f"already in the history as {original.id} \\(made here\\)") as made:
        import_file(history, path, again=False)
    assert made.value.record.id == original.id and history.count() == 1
    copy = import_file(history, path)  # the default adds a copy, as before
    history.delete(original.id)
    again = export_to_file(history, copy.id, tmp_path / "copy.json")
    with pytest.raises(AlreadyImported, match=f"as {copy.id} \\(imported\\)") as imported:
        import_file(history, path, again=False)  # the original file: its copy is recognised by its source
    assert imported.value.record.id == copy.id and history.count() == 1
    with pytest.raises(AlreadyImported, match=f"as {copy.id} \\(imported\\)"):
        import_file(history, again, again=False)  # the copy's own export is the copy


def test_keep_id_only_when_free(history, original, tmp_path):
    data = export_experiment(history, original.id)
    before = rows(history)
    with pytest.raises(ImportRefused, match=f"id {original.id} is already in the history"):
        import_experiment(history, data, keep_id=True)
    assert rows(history) == before
    history.delete(original.id)
    kept = import_experiment(history, data, keep_id=True)
    assert kept.id == original.id and history.count() == 1


def test_export_refuses_what_could_not_be_imported_again(history):
    big = history.save("evaluation", {}, results={"log": "x" * MAX_IMPORT_BYTES})
    with pytest.raises(StorageError, match="over the 5 MiB that can be imported"):
        export_experiment(history, big.id)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(results=st.dictionaries(st.text(TEXT, max_size=8) | st.sampled_from(["targets", "series", "error"]),
                               json_values, max_size=5),
       name=st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=50))
def test_any_experiment_round_trips(history, results, name):
    """Any results round-trip, unless they give a key the sweep's shape names a value it cannot hold (e.g.
    {"targets": None}): then the export itself refuses, rather than write a file no import takes."""
    original = history.save("sweep", CONFIG, name=name, results=results)
    if shape_problem(original) is not None:
        with pytest.raises(StorageError, match="cannot read back .*it was not exported"):
            export_experiment(history, original.id)
        return
    imported = import_experiment(history, export_experiment(history, original.id))
    assert without_provenance(imported) == without_provenance(original)


def test_export_refuses_a_record_its_kind_cannot_read_back(history):
    odd = history.save("sweep", CONFIG, results={"targets": None})
    with pytest.raises(StorageError, match=r"results/targets: None is not of type 'array'.*not exported"):
        export_experiment(history, odd.id)


# ---- hostile or broken files ----------------------------------------------------------------------------------

def valid_doc(**experiment_changes) -> dict:
    experiment = {"id": "a" * 32, "kind": "evaluation", "name": "shared", "status": "done",
                  "created_at": "2025-05-01T10:00:00+00:00", "updated_at": "2025-05-01T11:00:00+00:00",
                  "config": dict(CONFIG), "results": dict(RESULTS), "tags": ["x"]}
    experiment.update(experiment_changes)
    return {"format": "sparsity-explorer/experiment", "version": 1, "experiment": experiment}


def encoded(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


VALID = encoded(valid_doc())
HOSTILE = {
    "corrupt JSON": (VALID.replace(b'"kind"', b"kind"), r"not valid JSON \(line 1, column"),
    "truncated": (VALID[: len(VALID) // 2], "looks truncated"),
    "empty": (b"  \n", "empty"),
    "not UTF-8": (b'{"format": "\xff\xfe"}', "not UTF-8"),
    "oversize": (VALID + b" " * MAX_IMPORT_BYTES, r"MiB; shared experiments are at most 5 MiB"),
    "top-level list": (b"[1, 2]", "holds a JSON list"),
    "wrong format": (encoded({**valid_doc(), "format": "optuna/study"}), "'optuna/study'.*not a shared Sparsity"),
    "no format": (encoded({"version": 1, "experiment": {}}), "format is 'None'"),
    "future version": (encoded({**valid_doc(), "version": 2}), "newer Sparsity Explorer \\(format version 2\\)"),
    "version as text": (encoded({**valid_doc(), "version": "1"}), "at version: 1 was expected"),
    "extra top-level key": (encoded({**valid_doc(), "payload": 1}), "'payload' was unexpected"),
    "extra experiment key": (encoded(valid_doc(password="x")), "at experiment: .*'password' was unexpected"),
    "missing field": (encoded({**valid_doc(), "experiment": {"id": "a" * 32}}), "'kind' is a required property"),
    "config not an object": (encoded(valid_doc(config=[1, 2])), "at experiment/config: .*not of type 'object'"),
    "status wrong": (encoded(valid_doc(status=5)), "at experiment/status: 5 is not one of"),
    "tags not a list": (encoded(valid_doc(tags="owl")), "at experiment/tags: 'owl' is not of type 'array'"),
    "tag with a quote": (encoded(valid_doc(tags=['a"b'])), "at experiment/tags/0"),
    "bad id": (encoded(valid_doc(id="../../etc/passwd")), "at experiment/id"),
    "impossible date": (encoded(valid_doc(created_at="2025-13-45T00:00:00")), "created_at is not an ISO 8601"),
    "NUL in the name": (encoded(valid_doc(name="a\x00b")), "cannot be stored: The name contains a NUL"),
    "lone surrogate in the name": (encoded(valid_doc(name="a\ud800b")), "The name holds a lone surrogate"),
    "lone surrogate in the results": (encoded(valid_doc(results={"note": "\udfff"})), "results.note holds a lone"),
    "NaN literal": (VALID.replace(b"25.25", b"NaN", 1), "contains NaN, which is not a JSON number"),
    "Infinity literal": (VALID.replace(b"25.25", b"-Infinity", 1), "contains -Infinity"),
    "number overflowing to inf": (VALID.replace(b"25.25", b"1e999", 1), "number 1e999, too large"),
    "integer with 10000 digits": (VALID.replace(b"25.25", b"9" * 10_000, 1), "number with too many digits"),
    "duplicate key": (VALID.replace(b'"name": "shared"', b'"name": "shared", "name": "evil"'), "'name' twice"),
    "deep nesting": (encoded(valid_doc(results=nested(40))), "nested more than 32 levels"),
    "very deep nesting": (b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested more than 32 levels"),
    "too many values": (encoded(valid_doc(results={"x": [0] * 200_001})), "more than 200000 values"),
    "integer beyond 64 bits": (VALID.replace(b"25.25", b"9" * 20, 1), "results.ppl is an integer beyond 64 bits"),
    # Results (and the config and protocol the app reads) that the history could not list or chart.
    "evaluation rows without labels": (encoded(valid_doc(results={"target": 0.5, "rows": [{}]})),
                                       "at experiment/results/rows/0: 'label' is a required property"),
    "evaluation rows without a target": (encoded(valid_doc(results={"rows": [{"label": "a", "ratios": [], "ppl": 1}]})),
                                         "at experiment/results: 'target' is a dependency of 'rows'"),
    "search fitness as text": (encoded(valid_doc(kind="search", results={"best_fitness": "abc"})),
                               "at experiment/results/best_fitness: 'abc' is not of type 'number', 'null'"),
    "search generation as text": (encoded(valid_doc(kind="search", results={"generations": [
        {"generation": "0", "best": 1, "mean": 1}]})), "at experiment/results/generations/0/generation: '0' is not of"),
    "search fitness kind as a list": (encoded(valid_doc(kind="search", config={"fitness": ["kl"]})),
                                      r"at experiment/config/fitness: \['kl'\] is not of type 'string'"),
    "search stages without tokens": (encoded(valid_doc(kind="search", protocol={"stages": [{}]})),
                                     "at experiment/protocol/stages/0: 'tokens' is a required property"),
    "sweep point without perplexity": (encoded(valid_doc(kind="sweep", results={"series": [
        {"label": "a", "points": [{"sparsity": 0.5}]}]})), "at experiment/results/series/0/points/0: 'ppl' is a"),
    "structural full width of zero": (encoded(valid_doc(kind="structural", results={
        "selection": {"widths": [[1]]}, "full_widths": [0], "structure_labels": ["q"]})),
        "at experiment/results/full_widths/0: 0 is less than the minimum of 1"),
    "error that is not text": (encoded(valid_doc(status="failed", results={"error": {"a": 1}})),
                               "at experiment/results/error: {'a': 1} is not of type 'string'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_refused_and_change_nothing(history, original, case):
    data, message = HOSTILE[case]
    before = rows(history)
    with pytest.raises(ImportRefused, match=message):
        import_experiment(history, data)
    with pytest.raises(ImportRefused, match=message):
        import_experiment(history, data.decode("utf-8", errors="replace") if case != "not UTF-8" else data)
    assert rows(history) == before and history.count() == 1


def test_the_valid_base_document_is_accepted(history):
    imported = import_experiment(history, VALID)
    assert imported.name == "shared" and imported.results == RESULTS
    assert read_document(VALID) == valid_doc()["experiment"]


def test_every_truncation_is_named_as_such(history, original):
    for data in (VALID, export_experiment(history, original.id)):
        for cut in range(1, len(data)):
            with pytest.raises(ImportRefused, match="looks truncated"):
                read_document(data[:cut])


def test_oversize_file_is_refused_before_reading(history, tmp_path):
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(1 << 30)  # a sparse 1 GiB file: reading it would be slow, stat is not
    with pytest.raises(ImportRefused, match=r"huge.json is 1024.0 MiB"):
        import_file(history, path)
    with pytest.raises(ImportRefused, match="Cannot read"):
        import_file(history, tmp_path / "missing.json")
    assert history.count() == 0


# ---- permalinks ----------------------------------------------------------------------------------------------

def test_permalink_round_trip():
    id = "0123456789abcdef0123456789abcdef"
    assert permalink("https://host/app/", id) == f"https://host/app/?experiment={id}"
    link = permalink("http://localhost:7860/?tab=compare&experiment=old#plots", id)
    assert link == f"http://localhost:7860/?tab=compare&experiment={id}#plots"
    assert experiment_id_from_url(link) == id
    assert experiment_id_from_url("http://localhost:7860/?experiment=<script>") is None
    with pytest.raises(StorageError, match="is not an experiment id"):
        permalink("http://localhost:7860/", "1 OR 1=1")
