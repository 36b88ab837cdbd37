"""Tables from a column spec: each column says its title, how a row becomes its cell and where it aligns,
so a table's header and cells cannot drift apart. The terminal, markdown, LaTeX and CSV forms of one
table are written from the same spec."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from moe_lab.report import common


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[Any], str]  # row -> its text
    left: bool = False  # names and labels align left, numbers right
    tex_title: str = ""  # LaTeX header; "" means the title, escaped
    tex_cell: Callable[[Any], str] | None = None  # row -> LaTeX cell; None means the text cell, escaped


@dataclass(frozen=True)
class CsvColumn:
    name: str
    value: Callable[[Any], Any]  # row -> the value, at full precision (None for an empty cell)


def cells(columns: Sequence[Column], rows: Sequence) -> list[list[str]]:
    return [[c.cell(row) for c in columns] for row in rows]


def _titles_and_right(columns: Sequence[Column]) -> tuple[tuple[str, ...], set[str]]:
    return tuple(c.title for c in columns), {c.title for c in columns if not c.left}


def text_table(columns: Sequence[Column], rows: Sequence) -> str:
    """Plain aligned text for the terminal."""
    titles, right = _titles_and_right(columns)
    return common.text_table(titles, cells(columns, rows), right)


def markdown_table(columns: Sequence[Column], rows: Sequence) -> str:
    titles, right = _titles_and_right(columns)
    return common.markdown_table(titles, cells(columns, rows), right)


def tex_header(columns: Sequence[Column]) -> str:
    return " & ".join(c.tex_title or common.latex_escape(c.title) for c in columns) + r" \\"


def tex_lines(columns: Sequence[Column], rows: Sequence) -> list[str]:
    return [
        " & ".join(c.tex_cell(row) if c.tex_cell else common.latex_escape(c.cell(row)) for c in columns) + r" \\"
        for row in rows
    ]


def tex_alignment(columns: Sequence[Column]) -> str:
    return "".join("l" if c.left else "r" for c in columns)


def csv_table(columns: Sequence[CsvColumn], rows: Sequence, line_end: str = "\n") -> str:
    return common.csv_text([c.name for c in columns], [[c.value(row) for c in columns] for row in rows], line_end)
