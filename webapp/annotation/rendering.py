"""Prompts, responses and guidelines as safe HTML.

Model output and uploaded prompts are untrusted: Markdown is rendered with raw HTML disabled
(so `<script>` stays text), then the HTML is cleaned by nh3 against an allow-list, which also
drops event attributes and `javascript:` links and marks every link rel="noopener nofollow".
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_markdown = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(
    ["table", "strikethrough"]
)

ALLOWED_TAGS = {
    "a", "p", "br", "hr", "strong", "em", "b", "i", "s", "del", "code", "pre", "kbd",
    "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},  # language-python: kept so code blocks can be styled
    "th": {"style"},
    "td": {"style"},
    "ol": {"start"},
}
URL_SCHEMES = {"http", "https", "mailto"}


def render_markdown(text: str) -> str:
    """Sanitised HTML of `text` read as Markdown."""
    html = _markdown.render(text or "")
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener nofollow",
        filter_style_properties={"text-align"},
    )
