"""The one reporter every run takes: progress, cancellation, stages, events and the time left."""

import time

import pytest

from dsa_core.errors import Cancelled
from dsa_core.reporter import EventLog, Reporter


def test_progress_is_recorded_and_raises_once_cancelled_but_update_does_not():
    shown = []

    class Shown(Reporter):
        def on_progress(self, phase, done, total):
            shown.append((phase, done, total))

    r = Shown("the sweep")
    r("perplexity", 1, 4)
    assert (r.phase, r.done, r.total) == ("perplexity", 1, 4) and shown == [("perplexity", 1, 4)]
    r.cancel()
    assert r.cancelled and r.stop.is_set()
    with pytest.raises(Cancelled, match="The sweep was cancelled"):
        r.progress("perplexity", 2, 4)
    r.update("generation 3, candidates", 5, 10)  # a search stops on its own: no exception
    assert shown[-1] == ("generation 3, candidates", 5, 10)


def test_eta_prefers_what_the_run_said_then_works_it_out_from_parts():
    heard = []

    class Heard(Reporter):
        def on_time_left(self, seconds, how):
            heard.append((seconds, how))

    r = Heard()
    assert r.eta() is None  # nothing to go by yet
    r.time_left(100.0, "training 90 s, evaluation 10 s")
    assert 99 < r.eta() <= 100 and heard == [(100.0, "training 90 s, evaluation 10 s")]
    parts = Reporter()
    parts.started -= 10  # ten seconds spent, on the first of four parts, half done
    parts.begin("uniform (1 of 4)", 0, 4)
    parts("perplexity", 1, 2)
    assert parts.stage == "uniform (1 of 4)" and parts.part == (0, 4)
    assert parts.eta() == pytest.approx(10 * (1 - 1 / 8) / (1 / 8), rel=0.05)


def test_an_event_log_keeps_what_it_hears_in_order():
    log = EventLog()
    for item in ("a", {"step": 1}, 3):
        log.event(item)
    assert log.events == ["a", {"step": 1}, 3]
    assert log.elapsed() >= 0 and time.perf_counter() >= log.started
