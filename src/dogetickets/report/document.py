"""The report as a document: a list of blocks (headings, paragraphs, lists, tables, images, code), rendered
both to markdown (images linked relative to the markdown file) and to one self-contained HTML page (images
inlined)."""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_TITLE", "Document"]

DEFAULT_TITLE = "Doge tickets report"  # the report's heading and HTML title unless given


@dataclass
class Document:
    """A report as a list of blocks, rendered both to markdown and to self-contained HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)
    md_dir: Path | None = None  # where the markdown file goes (image links are relative to it)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, df: Any) -> None:
        self.blocks.append(("table", df))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (Path(path), alt)))

    def code(self, lines: list[str]) -> None:
        """Lines shown verbatim (a fenced block in markdown, <pre> in HTML)."""
        self.blocks.append(("code", list(lines)))

    def _link(self, path: Path) -> str:
        """The image's path relative to the markdown file (just its name without one)."""
        if self.md_dir is None:
            return Path(path).name
        return Path(os.path.relpath(Path(path).resolve(), Path(self.md_dir).resolve())).as_posix()

    def markdown(self) -> str:
        from dogetickets.report.tables import to_markdown

        out = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1] + "\n")
            elif kind == "p":
                out.append(x + "\n")
            elif kind == "ul":
                out.append("\n".join(f"- {line}" for line in x) + "\n")
            elif kind == "table":
                out.append(to_markdown(x))
            elif kind == "img":
                out.append(f"![{x[1]}]({self._link(x[0])})\n")
            elif kind == "code":
                text = "\n".join(x)
                fence = "`" * max(3, 1 + max((len(r) for r in re.findall("`+", text)), default=0))
                out.append(f"{fence}\n{text}\n{fence}\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
            "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
            "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}</style>",
            "</head><body>",
        ]
        for kind, x in self.blocks:
            if kind == "h":
                parts.append(f"<h{x[0]}>{html.escape(x[1])}</h{x[0]}>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(x)}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in x) + "</ul>")
            elif kind == "table":
                parts.append(x.to_html(index=False, escape=True, na_rep="", border=0))
            elif kind == "img":
                data = base64.b64encode(x[0].read_bytes()).decode("ascii")
                parts.append(f'<p><img alt="{html.escape(x[1])}" src="data:image/png;base64,{data}"></p>')
            elif kind == "code":
                parts.append("<pre><code>" + html.escape("\n".join(x)) + "</code></pre>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"
