"""Markdown from models and uploads becomes safe HTML: no script, no event handler, no
javascript: link ever gets through."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.template import Context, Template

from webapp.annotation.rendering import render_markdown
from webapp.annotation.templatetags.annotation_tags import markdown_filter

ATTACKS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](&#106;avascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "![x](javascript:alert(1))",
    '<svg onload="alert(1)"></svg>',
    "<iframe src='https://evil.example'></iframe>",
    '[x](https://ok.example "title" onclick=alert(1))',
    '<div style="background:url(javascript:alert(1))">x</div>',
    "```\n</code><script>alert(1)</script>\n```",
]


class Elements(HTMLParser):
    """Every tag and attribute of some HTML, as the browser would parse it."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]


def parse(html: str) -> Elements:
    elements = Elements()
    elements.feed(html)
    return elements


@pytest.mark.parametrize("attack", ATTACKS)
def test_no_script_event_handler_or_javascript_link_gets_through(attack: str) -> None:
    elements = parse(render_markdown(attack))
    assert not {"script", "iframe", "svg", "img", "style"} & set(elements.tags)
    assert not [name for name, _ in elements.attributes if name.startswith("on")]
    assert not [v for _, v in elements.attributes if "javascript:" in v.lower()]
    assert "style" not in [name for name, _ in elements.attributes]


def test_markdown_formats_emphasis_lists_and_tables() -> None:
    html = render_markdown("**bold** and *it*\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    elements = parse(html)
    assert {"strong", "em", "ul", "li", "table", "td"} <= set(elements.tags)


def test_code_blocks_keep_their_text_and_language() -> None:
    html = render_markdown("```python\nif a < b:\n    print('<b>')\n```")
    assert '<pre><code class="language-python">' in html
    assert "if a &lt; b:" in html and "&lt;b&gt;" in html


def test_links_open_safely() -> None:
    html = render_markdown("[docs](https://example.com/page)")
    assert 'href="https://example.com/page"' in html
    assert 'rel="noopener nofollow"' in html


def test_raw_html_is_shown_as_text() -> None:
    html = render_markdown("<b>not bold</b>")
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html


def test_the_template_filter_renders_and_marks_safe() -> None:
    template = Template("{% load annotation_tags %}{{ text|markdown }}")
    html = template.render(Context({"text": "*hi* <script>x</script>"}))
    assert "<em>hi</em>" in html
    assert "<script>" not in html


@pytest.mark.parametrize("blank", ["", "  \n\t"])
def test_a_blank_response_says_it_is_empty_instead_of_showing_an_empty_box(blank: str) -> None:
    html = markdown_filter(blank)
    assert "empty-text" in html and "nothing was written" in html
    assert "empty-text" not in markdown_filter("words")
