"""Recorded text made safe to show in the report's markdown: the one place it is escaped.

A run records its status, experiment, model, device, commit, image, system ... as it likes; the
report shows them in table cells, list items, code spans and a code block.  What would break that
structure is escaped here, and only here: pipes, backslashes and ``<`` (a table cell, raw HTML), newlines, control
and bidi-override characters (every non-printable character is shown as its escape, ``\\n`` or
``\\u202e``, so nothing reorders or splits a line).
"""

from __future__ import annotations

import re
from typing import Any

_BACKTICKS = re.compile("`+")


def visible(value: Any, keep: str = "") -> str:
    """``value`` as text with each non-printable character (but those in ``keep``) written as its Python escape."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii") for c in text)


def md_text(value: Any) -> str:
    """Recorded text for a table cell or a list item: one line; backslashes, pipes and ``<`` (raw HTML)
    escaped."""
    return visible(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")


def md_code(value: Any) -> str:
    """Recorded text as an inline code span outside a table (a path, a command): one line, fenced by
    more backticks than it holds (backslashes are literal in a code span)."""
    text = visible(value)
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_block(value: Any) -> list[str]:
    """Recorded multi-line text (a GPU topology) as a fenced code block: its lines kept, every other
    non-printable character escaped, the fence longer than any run of backticks inside."""
    lines = [visible(line, keep="\t") for line in str(value).splitlines()]
    fence = "`" * max([3, *(len(run) + 1 for line in lines for run in _BACKTICKS.findall(line))])
    return [fence, *lines, fence]
