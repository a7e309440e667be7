"""The prose of ``bench.md`` and ``gpu.md`` lives in ``benchmarks/templates/*.md``; the numbers come
from the results JSON. A template is :class:`string.Template` text: ``${name}`` is filled from the
values an item computes, ``$$`` is a literal dollar; a placeholder without a value is an error
(``KeyError``), so no section is ever written with a hole in it."""

from __future__ import annotations

import string
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"


def fill(name: str, **values) -> str:
    """``templates/<name>.md`` with every ``${placeholder}`` replaced by ``str(values[placeholder])``."""
    text = (TEMPLATES / f"{name}.md").read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def placeholders(name: str) -> set:
    """The names a template expects (for tests and for item authors)."""
    text = (TEMPLATES / f"{name}.md").read_text()
    return {m.group("braced") or m.group("named") for m in string.Template.pattern.finditer(text)} - {None}


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def lines(rows) -> str:
    return "\n".join(rows)
