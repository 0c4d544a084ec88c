"""User-controlled text shown as text: names, tags, notes, model ids, environment fields, anything read from an
imported file, and the error messages that quote them. Markdown components would render their HTML, images and
links (an image makes every viewer's browser fetch its URL), and Plotly renders a subset of HTML, links included,
in legends, labels and hover text. Nothing else lives here.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

# What Markdown (CommonMark with GitHub's extensions, as Gradio renders it) reads as markup in running text: HTML
# and entities, code, emphasis and strike-through, a heading's closing #, KaTeX's $, a link's or image's "](" and
# "][", autolinks (a scheme's "://", "www.", an e-mail's "@"), and the backslash that escapes all of these; and at
# the start of a line (the text may begin a list item), a list marker or a link reference definition's "[".
_MARKUP = re.compile(r"^[ \t]*\d*[-+=.)\[]|[\\`*_~<>&#$@]|\](?=[(\[])|:(?=//)|(?<=www)\.", re.IGNORECASE)
# Kept as they are in a link's address; the rest (parentheses, brackets, spaces, quotes...) is percent-encoded.
_URL_SAFE = ":/?#@!$&'*+,;=%"


def markdown(text: object) -> str:
    """`text` as Markdown that shows it literally, on one line: each character that could start markup is
    backslash-escaped (CommonMark allows it before any ASCII punctuation), and line breaks become spaces."""
    return _MARKUP.sub(lambda m: f"{m[0][:-1]}\\{m[0][-1]}", " ".join(str(text).splitlines()))


def code(text: object) -> str:
    """`text` in code style. A code span would show escapes as typed, so this is the HTML element around the
    escaped text."""
    return f"<code>{markdown(text)}</code>"


def link(url: str) -> str:
    """A Markdown link that shows its own address."""
    return f"[{markdown(url)}]({quote(url, safe=_URL_SAFE)})"


def plot(text: object) -> str:
    """`text` for a Plotly legend, axis label or hover text: its tags and entities shown, not rendered."""
    return html.escape(str(text), quote=False)
