"""The report as a document model: sections of paragraphs, tables, figures and images, rendered
once to Markdown and once to self-contained HTML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    """A table whose rows are methods (``methods[i]`` colours row i) or plain rows (None)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    methods: list[str | None]
    notes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    """A figure written as PNG (for Markdown) and SVG (embedded in the HTML)."""

    title: str
    caption: str
    png: Path
    svg: Path


@dataclass
class Image:
    """An image file a task wrote (e.g. the localization gallery)."""

    title: str
    caption: str
    path: Path


Block = Union[Paragraph, Table, Figure, Image]


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # shown as a colour legend


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]
    palette: dict[str, str]
