"""Tests of ui/escape.py: any text, once escaped, renders as that text and nothing else, wherever the app puts it in
Markdown (mid-line, or first in a list item); links keep their address; Plotly labels show their tags.

Rendering is CommonMark with raw HTML on (markdown-it); the browser test in test_e2e.py covers Gradio's renderer."""

import html
import re

from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from ui import escape

RENDER = MarkdownIt("commonmark").enable("strikethrough").render
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)))
HOSTILE = ['<img src="http://beacon.invalid/x.png">', "![x](http://beacon.invalid/x.png)", "[a](http://b.invalid)",
           "<http://b.invalid>", "&lt;b&gt; &amp;", "`code` *em* _em_ ~~del~~ $$x$$", "- item", "12. item", "# h",
           "[a]: http://b.invalid", "a\n\n<script>alert(1)</script>", "back\\<i>slash</i>"]


def shown(markdown: str) -> tuple[list[str], str]:
    """The tags a Markdown text renders to, and its text."""
    rendered = RENDER(markdown)
    return re.findall(r"<[^>]*>", rendered), html.unescape(re.sub(r"<[^>]*>", "", rendered)).strip("\n")


def flat(text: str) -> str:
    return " ".join(text.splitlines())


@given(st.one_of(TEXT, st.sampled_from(HOSTILE)))
def test_escaped_text_renders_as_itself_mid_line(text):
    tags, shown_text = shown(f"a {escape.markdown(text)} z")
    assert tags == ["<p>", "</p>"] and shown_text == f"a {flat(text)} z"


@given(st.one_of(TEXT, st.sampled_from(HOSTILE)).filter(lambda t: flat(t) == flat(t).strip() != ""))
def test_escaped_text_renders_as_itself_first_in_a_list_item(text):
    tags, shown_text = shown(f"- {escape.markdown(text)}")
    assert tags == ["<ul>", "<li>", "</li>", "</ul>"] and shown_text == flat(text)


def test_code_and_links():
    tags, text = shown(f"tags: {escape.code('<b>`x`</b>')}")
    assert tags == ["<p>", "<code>", "</code>", "</p>"] and text == "tags: <b>`x`</b>"
    link = escape.link("http://host/a(b)[c]?experiment=1#x")
    (anchor,) = re.findall(r"<a [^>]*>", RENDER(link))
    assert anchor == '<a href="http://host/a%28b%29%5Bc%5D?experiment=1#x">'
    assert shown(link)[1] == "http://host/a(b)[c]?experiment=1#x"


def test_plot_labels_show_their_tags():
    assert escape.plot('<a href="http://b.invalid">x</a> & y') == '&lt;a href="http://b.invalid"&gt;x&lt;/a&gt; &amp; y'
