"""The report as GitHub-flavoured Markdown; figures and images are linked by relative path."""
from __future__ import annotations

import os
from pathlib import Path

from bench.report.document import Document, Figure, Image, Paragraph, Table


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_md(table: Table) -> list[str]:
    lines = [f"### {table.title}", "",
             "| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    lines.append("")
    lines += [f"- {note}" for note in table.notes]
    return lines + [""] if table.notes else lines


def render_markdown(doc: Document, out_dir: Path) -> str:
    def link(path: Path) -> str:
        return Path(os.path.relpath(path, out_dir)).as_posix()

    lines = [f"# {doc.title}", "", doc.subtitle, ""]
    lines += [f"- [{s.title}](#{s.anchor})" for s in doc.sections] + [""]
    for section in doc.sections:
        lines += [f'<a id="{section.anchor}"></a>', "", f"## {section.title}", ""]
        if section.methods:
            lines += ["Methods, in report order: " + ", ".join(f"`{m}`" for m in section.methods), ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                lines += table_md(block)
            elif isinstance(block, Figure):
                lines += [f"### {block.title}", "", f"![{block.title}]({link(block.png)})", "",
                          f"{block.caption} ([SVG]({link(block.svg)}))", ""]
            elif isinstance(block, Image):
                lines += [f"### {block.title}", "", f"![{block.title}]({link(block.path)})", "",
                          block.caption, ""]
    return "\n".join(lines).rstrip() + "\n"
