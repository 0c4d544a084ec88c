"""What every tab's handlers share: the context they read (`AppContext`), waiting for the device, the streaming of
a device job's progress, status lines and permalinks. The tabs import this module; ui/app.py lays them out.

Device work (loading, evaluating, searching, structural training) waits in the workspace's queue, one job at a
time per device in order of arrival, and each waiting page says its place (`wait_for_device`); cheap work
(profiles, history) runs beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from dsa_core.errors import Cancelled, DSAError
from storage import History, Recorder
from ui import escape
from ui.jobs import Job
from ui.workspace import Workspace


@dataclass
class AppContext:
    """What the tabs share: the workspace (model, device), the history and its recorder (through which every run is
    saved), and each other's components by name."""

    workspace: Workspace
    history: History
    recorder: Recorder = field(init=False)
    components: dict[str, Any] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    page_loads: list[tuple] = field(default_factory=list)  # (fn, inputs, outputs) run when a page opens
    targets: list[gr.Slider] = field(default_factory=list)  # the target sparsity, one slider per tab that uses it

    def __post_init__(self) -> None:
        self.recorder = Recorder(self.history)

    def __getitem__(self, name: str) -> Any:
        return self.components[name]

    def add(self, **components: Any) -> None:
        self.components.update(components)

    @property
    def device_queue(self) -> dict:
        """Event options of work that holds the device: Gradio lets every such event in, so that a waiting one can
        say its place; the workspace's queue runs them one at a time, in order (`wait_for_device`)."""
        return {"concurrency_limit": None}


def owner_of(request: gr.Request | None) -> str:
    """The page (Gradio session) an event comes from: whose queued work a Cancel withdraws."""
    return getattr(request, "session_hash", None) or ""


def wait_for_device(ctx: AppContext, name: str, n_outputs: int,
                    request: gr.Request | None) -> Iterator[tuple]:
    """Join the device's queue and yield "⏳ Queued (position N)…" status lines (output 0; the others skipped)
    until this work's turn; returns its ticket, for `Workspace.start`, or None when Cancel withdrew it. A page
    closed while waiting leaves the queue. Use as `ticket = yield from wait_for_device(...)`."""
    ws = ctx.workspace
    ticket = ws.queue.join(name, owner_of(request))
    try:
        while not ws.turn(ticket):
            if ticket.withdrawn.is_set() or not ws.queue.position(ticket):
                yield (f"⚠ {name.capitalize()} was withdrawn from the queue; nothing ran.",
                       *(gr.skip(),) * (n_outputs - 1))
                return None
            yield (ws.queued_text(ticket), *(gr.skip(),) * (n_outputs - 1))
            ws.queue.wait(0.5)
    except BaseException:
        ws.queue.leave(ticket)
        raise
    return ticket


def target_slider(ctx: AppContext, elem_id: str) -> gr.Slider:
    """The target sparsity as a tab shows it; every tab's copy moves with the others (`wire_targets`)."""
    slider = gr.Slider(0.05, 0.95, value=0.5, step=0.01, label="Target sparsity", elem_id=elem_id,
                       info="the parameter-weighted mean every allocation reaches; one value for every tab")
    ctx.targets.append(slider)
    return slider


def wire_targets(ctx: AppContext) -> None:
    """Moving the target on one tab moves it on the others (`input` fires on the user's edits only, so the
    updates it makes do not echo back)."""
    for slider in ctx.targets:
        others = [o for o in ctx.targets if o is not slider]
        slider.input(lambda v, n=len(others): [v] * n, slider, others, api_visibility="private",
                     show_progress="hidden", trigger_mode="always_last")


def error_text(e: BaseException) -> str:
    """An error as a status line; its message may quote what the user typed or imported."""
    return f"{'⚠' if isinstance(e, Cancelled) else '✗'} {escape.markdown(e)}"


def warnings_text(warnings: list[str]) -> str:
    return "\n".join(f"- ⚠ {w}" for w in warnings)


def cancel_handler(workspace: Workspace) -> Callable[[], Any]:
    """What a Cancel or Stop button does: withdraw this page's work from the queue if it waits, else ask the
    running job to stop (its own status line then says how it ended); with nothing running, leave the status line
    as it is (the summary of what ended stays) and say so in a notice."""

    def cancel(request: gr.Request) -> Any:
        message = workspace.cancel(owner_of(request))  # this page's queued work first, else the running job
        if message == "Nothing is running.":
            gr.Info(message)
            return gr.skip()
        return message

    return cancel


def permalink_for(request: gr.Request | None, id: str) -> str:
    """The full permalink when the page's address is known (the browser sends it as Referer), else the query
    part, which a browser resolves against the page it is on."""
    from storage import permalink

    referer = (dict(request.headers).get("referer") if request is not None else None) or ""
    return permalink(referer, id) if referer.startswith(("http://", "https://")) else f"?experiment={id}"


def stream_job(job: Job, n_outputs: int, finish: Callable[[Any], tuple], fail: Callable[[BaseException], tuple],
               live: Callable[[Job], tuple] | None = None,
               abandoned: Callable[[], None] | None = None) -> Iterator[tuple]:
    """Yield the job's status line (output 0) while it runs, then `finish(result)` or `fail(error)`.

    `live(job)` may return fresh values for the other outputs while the job runs (a search's charts). If the
    page goes away mid-job the generator is closed: the job is cancelled and waited for, so that the device is
    free when the queue hands it to the next event, and then `abandoned()` records what became of it."""
    ended = False
    try:
        for _ in job.updates():
            rest = live(job) if live is not None else (gr.skip(),) * (n_outputs - 1)
            yield (job.status(), *rest)
        try:
            result = job.result()
        except DSAError as e:
            out = fail(e)
        else:
            out = finish(result)
        ended = True
        yield out
    finally:
        job.stop_and_wait()
        if not ended and abandoned is not None:
            abandoned()
