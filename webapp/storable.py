"""Text that both databases can store, checked once for every path that takes text from outside.

PostgreSQL refuses a NUL character (U+0000) in text and in JSON, and no driver can encode a
surrogate code point (U+D800-U+DFFF, which a JSON escape such as "\\ud800" gives without its
pair) as UTF-8. SQLite stores the first silently and fails on the second. The workspace's answers
and prompts, uploads and the API check their text here before they write anything, so each
database gives the same 4xx with the same message, and nothing is half-written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from django.core.exceptions import ValidationError

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_character(value: object) -> str:
    """The first character of `value` that cannot be stored, described ("a NUL character
    (U+0000)"), or "" when there is none. Strings inside mappings (keys too), lists and tuples
    count; other values hold no text."""
    pending = [value]
    while pending:  # a loop, not recursion: JSON from outside may nest deeper than the stack
        current = pending.pop()
        if isinstance(current, str):
            match = UNSTORABLE.search(current)
            if match is not None:
                character = match.group()
                name = "a NUL character" if character == "\x00" else "an unpaired surrogate"
                return f"{name} (U+{ord(character):04X})"
        elif isinstance(current, Mapping):
            pending += [*current.keys(), *current.values()]
        elif isinstance(current, list | tuple):
            pending += current
    return ""


def storable_problem(value: object, what: str) -> str:
    """A message saying that `what` holds a character that cannot be stored; "" if it holds
    none."""
    found = unstorable_character(value)
    return f"{what} contains {found}, which cannot be stored; remove it." if found else ""


def check_storable(value: object, what: str) -> None:
    """ValidationError (code "unstorable") when `value` holds a character that cannot be
    stored."""
    if problem := storable_problem(value, what):
        raise ValidationError(problem, code="unstorable")
