"""The "History & sharing" tab: list and filter saved experiments, open one with its charts, compare several on
one chart, rename, tag, delete; export one as a JSON file and import one (checked by storage.sharing: a corrupt
or hostile file is refused with a message and changes nothing). A permalink `?experiment=<id>` opens here."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from dsa_core.search_record import study_reader
from storage import KINDS, AlreadyImported, ExperimentRecord, StorageError, export_to_file, import_file
from storage.records import ID_PATTERN
from ui import escape, experiments
from ui.context import AppContext, error_text, permalink_for
from ui.tab_evaluate import parse_tags

ALL = "all"
LIST_LIMIT = 200


def build(ctx: AppContext) -> None:
    history = ctx.history
    studies: list = []  # the history database's Optuna studies, opened once they exist (searches live in them)

    def study_storage():
        if not studies and (storage := study_reader(history.db.study_url)) is not None:
            studies.append(storage)
        return studies[0] if studies else None

    with gr.Row():
        kind = gr.Dropdown([ALL, *KINDS], value=ALL, label="Kind", elem_id="history-kind")
        text = gr.Textbox(label="Name or model contains", elem_id="history-text")
        tag = gr.Textbox(label="Tag", elem_id="history-tag")
        page = gr.Number(1, precision=0, minimum=1, label=f"Page ({LIST_LIMIT} a page)", elem_id="history-page")
        refresh = gr.Button("Refresh", elem_id="history-refresh")
    status = gr.Markdown(elem_id="history-status", elem_classes="status-line")  # what the list shows
    table = gr.Dataframe(headers=experiments.TABLE_HEADERS, interactive=False, elem_id="history-table",
                         label="Experiments (newest first; click a row to open it)", max_height=320)
    # Custom values: an id pasted here (or sent through the API) need not be in the list shown.
    picker = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Selected experiments",
                         info="one to open or export, two or more to compare; any to delete", elem_id="history-pick")
    # Each message appears beside the button that caused it.
    with gr.Row():
        open_ = gr.Button("Open", variant="primary", elem_id="history-open")
        compare = gr.Button("Compare", elem_id="history-compare")
        export = gr.Button("Export as JSON", elem_id="history-export")
        delete = gr.Button("Delete", variant="stop", elem_id="history-delete")
    action_status = gr.Markdown(elem_id="history-action-status", elem_classes="status-line")
    details = gr.Markdown(elem_id="history-details")
    with gr.Row():
        name = gr.Textbox(label="Name", elem_id="history-name")
        tags = gr.Textbox(label="Tags", placeholder="comma-separated", elem_id="history-tags")
        with gr.Column(min_width=160):
            save = gr.Button("Save name & tags", elem_id="history-save")
            save_status = gr.Markdown(elem_id="history-save-status", elem_classes="status-line")
    plots = {slot: gr.Plot(label=slot.capitalize(), visible=False, elem_id=f"history-{slot}")
             for slot in experiments.CHARTS}
    record_json = gr.JSON(label="Full record", elem_id="history-json")
    with gr.Row():
        exported = gr.File(label="Exported file", interactive=False, elem_id="history-exported")
        upload = gr.File(label="Import an experiment (.json)", file_types=[".json"], elem_id="history-upload")
    with gr.Row():
        import_ = gr.Button("Import", elem_id="history-import", scale=0, min_width=120)
        import_status = gr.Markdown(elem_id="history-import-status", elem_classes="status-line")
    listing = [table, picker]
    shown = [action_status, details, name, tags, record_json, *plots.values()]

    def listing_of(kind: str, text: str, tag: str, selected: list[str] | None,
                   page: float | None = 1) -> tuple[list, dict, str]:
        """Table rows of one page, the picker's choices (keeping what is still listed) and what the page shows of
        how many experiments match."""
        criteria = {"kind": None if kind in (None, ALL) else kind, "text": text or None, "tag": tag or None}
        total = history.count(**criteria)
        pages = max(1, math.ceil(total / LIST_LIMIT))
        page = min(max(1, int(page or 1)), pages)
        records = history.find(**criteria, limit=LIST_LIMIT, offset=(page - 1) * LIST_LIMIT)
        keep = [i for i in (selected or []) if any(r.id == i for r in records)]
        picker_update = gr.update(choices=[experiments.choice(r) for r in records], value=keep)
        first = (page - 1) * LIST_LIMIT + 1
        shown = (f"{total} experiment(s) listed." if pages == 1 else f"Experiments {first}–{first + len(records) - 1}"
                 f" of {total} listed (page {page} of {pages}, newest first).")
        return experiments.table_rows(records), picker_update, shown

    def list_experiments(kind: str, text: str, tag: str, selected: list[str] | None, page: float | None = 1) -> tuple:
        try:
            return listing_of(kind, text, tag, selected, page)
        except StorageError as e:
            return gr.skip(), gr.skip(), error_text(e)

    def relist(kind: str, text: str, tag: str, selected: list[str] | None, page: float | None = 1) -> tuple:
        """After a change: the list again, leaving the message of the change in place."""
        try:
            return listing_of(kind, text, tag, selected, page)[:2]
        except StorageError:
            return gr.skip(), gr.skip()

    def show(records: list[ExperimentRecord], message: str, request: gr.Request | None) -> tuple:
        records = experiments.refreshed(records, study_storage())  # a running search's candidates, workers' too
        charts = experiments.compare(records)
        figs = [gr.update(value=charts[s], visible=True) if s in charts else gr.update(visible=False)
                for s in experiments.CHARTS]
        if len(records) == 1:
            rec = records[0]
            return (message, experiments.summary_markdown(rec, permalink_for(request, rec.id)), rec.name,
                    ", ".join(rec.tags), rec.to_dict(), *figs)
        summary = "\n\n".join(f"- {escape.markdown(experiments.label(r))} ({r.kind}, `{r.id}`): "
                              f"{escape.markdown(experiments.headline(r))}" for r in records)
        return message, f"### Comparing {len(records)} experiments\n\n{summary}", "", "", None, *figs

    def unchanged(message: str) -> tuple:
        return (message, *(gr.skip(),) * (len(shown) - 1))

    def open_one(ids: list[str] | None, request: gr.Request) -> tuple:
        if not ids:
            return unchanged("✗ Pick an experiment to open.")
        try:
            return show([history.get(ids[0])], f"Opened `{ids[0]}`.", request)
        except StorageError as e:
            return unchanged(error_text(e))

    def compare_many(ids: list[str] | None, request: gr.Request) -> tuple:
        if not ids or len(ids) < 2:
            return unchanged("✗ Pick two or more experiments to compare.")
        try:
            return show(history.compare(ids), f"Comparing {len(ids)} experiments.", request)
        except StorageError as e:
            return unchanged(error_text(e))

    def save_meta(ids: list[str] | None, name: str, tags: str) -> str:
        if not ids or len(ids) != 1:
            return "✗ Pick exactly one experiment to rename or tag."
        try:
            history.update(ids[0], name=name or "", tags=parse_tags(tags))
        except StorageError as e:
            return error_text(e)
        return f"✓ Saved name and tags of `{ids[0]}`."

    def delete_many(ids: list[str] | None) -> str:
        if not ids:
            return "✗ Pick the experiments to delete."
        try:
            return f"✓ Deleted {history.delete(ids)} experiment(s)."
        except StorageError as e:
            return error_text(e)

    def export_one(ids: list[str] | None) -> Iterator[tuple]:
        # A generator: Gradio copies the yielded file into its own cache before it resumes us, and only then
        # (or when the run is dropped) does the folder go.
        if not ids or len(ids) != 1:
            yield "✗ Pick exactly one experiment to export.", None
            return
        with tempfile.TemporaryDirectory(prefix="sparsity-explorer-export-") as folder:
            try:
                path = export_to_file(history, ids[0], Path(folder) / f"experiment-{ids[0]}.json")
            except StorageError as e:
                yield error_text(e), None
                return
            yield f"✓ Exported `{ids[0]}`: download it below.", str(path)

    def import_one(path: str | None, kind: str, text: str, tag: str) -> tuple:
        """Import a shared file; one already in the history (made here, or imported before) is not added twice,
        and is selected instead."""
        if not path:
            return "✗ Choose a .json file to import first.", gr.skip(), gr.skip()
        try:
            try:
                rec, message = import_file(history, path, again=False), "✓ Imported as `{id}` ({label})."
            except AlreadyImported as e:
                rec, how = e.record, "imported before" if e.record.source else "made here"
                message = f"ⓘ Already in the history as `{{id}}` ({{label}}, {how}); nothing was added."
            rows, picker_update, _ = listing_of(kind, text, tag, [rec.id])
        except StorageError as e:
            return f"✗ Import refused: {escape.markdown(e)}", gr.skip(), gr.skip()
        return message.format(id=rec.id, label=escape.markdown(experiments.label(rec))), rows, picker_update

    def open_row(evt: gr.SelectData, request: gr.Request) -> tuple:
        """A click on a row of the list opens that experiment (its id is the row's last cell)."""
        row = evt.row_value or []
        id = str(row[-1]) if row else ""
        if not ID_PATTERN.match(id):
            return gr.skip(), *unchanged("✗ That row names no experiment; refresh the list.")
        return gr.update(value=[id]), *open_one([id], request)

    filters = [kind, text, tag, picker, page]
    ctx.add(history_table=table, history_picker=picker, history_shown=shown, history_open=open_one,
            history_listing=listing_of)
    refresh.click(list_experiments, filters, [*listing, status], api_name="list_experiments")
    for box in (text, tag):
        box.submit(list_experiments, filters, [*listing, status], api_visibility="private")
    for control in (kind, page):
        control.input(list_experiments, filters, [*listing, status], api_visibility="private")
    ctx["history_tab"].select(relist, filters, listing, api_visibility="private")  # show what other tabs saved
    open_.click(open_one, picker, shown, api_name="open_experiment")
    table.select(open_row, None, [picker, *shown], api_visibility="private")
    compare.click(compare_many, picker, shown, api_name="compare_experiments")
    quiet = {"api_visibility": "private"}
    save.click(save_meta, [picker, name, tags], save_status, api_name="rename_experiment").then(
        relist, filters, listing, **quiet)
    delete.click(delete_many, picker, action_status, api_name="delete_experiments").then(relist, filters, listing,
                                                                                        **quiet)
    export.click(export_one, picker, [action_status, exported], api_name="export_experiment")
    import_.click(import_one, [upload, kind, text, tag], [import_status, *listing], api_name="import_experiment")


def bad_link_text(wanted: str, exists: bool | None = None) -> str:
    """Why a permalink opens nothing: its id is malformed, or names no experiment of this history."""
    if not ID_PATTERN.match(wanted):
        why = (f"{escape.markdown(repr(wanted[:40]))} is not an experiment id (ids are 32 hexadecimal characters); "
               "check that the whole link was copied.")
    else:
        why = (f"it names experiment `{wanted}`, which is not in this history: it may have been deleted, or saved "
               "by another copy of the app, with its own database (export it there and import it here).")
    return f"### ✗ This link opens no experiment\n\n{why}"


def wire_permalink(ctx: AppContext, demo: gr.Blocks) -> None:
    """On page load: fill the history list, and with `?experiment=<id>` open that experiment in this tab (or say
    why it cannot be opened)."""
    shown, listing_of = ctx["history_shown"], ctx["history_listing"]
    outputs = [ctx["history_table"], ctx["history_picker"], ctx["tabs"], *shown]

    def on_load(request: gr.Request) -> tuple:
        asked = dict(request.query_params).get("experiment")
        wanted = (asked or "").strip().lower()  # ids are lower-case hex; a link typed in capitals still opens
        try:
            rows, picker_update, _ = listing_of(ALL, "", "", [wanted] if wanted else None)
            found = bool(wanted) and ID_PATTERN.match(wanted) is not None and ctx.history.exists(wanted)
        except StorageError as e:
            return gr.skip(), gr.skip(), gr.skip(), error_text(e), *(gr.skip(),) * (len(shown) - 1)
        if asked is None:
            return rows, picker_update, *(gr.skip(),) * (1 + len(shown))
        if not found:
            return (rows, picker_update, gr.Tabs(selected="history"), "", bad_link_text(wanted or asked),
                    *(gr.skip(),) * (len(shown) - 2))
        return rows, picker_update, gr.Tabs(selected="history"), *ctx["history_open"]([wanted], request)

    demo.load(on_load, None, outputs, api_visibility="private")
