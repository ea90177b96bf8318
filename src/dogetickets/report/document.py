"""The report as a document: a list of blocks (headings, paragraphs, lists, tables, images, code), rendered
both to markdown (images linked relative to the markdown file) and to one self-contained HTML page (images
inlined)."""

from __future__ import annotations

import base64
import html
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_TITLE", "FIGURE_PX_PER_INCH", "Document", "png_size"]

DEFAULT_TITLE = "Doge tickets report"  # the report's heading and HTML title unless given
LONG_CELL = 40  # characters: a longer table cell may wrap in the HTML page
FIGURE_PX_PER_INCH = 120  # CSS px per figure inch in the HTML page: a figure's 10 pt text shows at ~17 px
STYLE = (
    "body{font-family:system-ui,sans-serif;font-size:16px;line-height:1.45;max-width:1200px;margin:2em auto;"
    "padding:0 1em}p,li{max-width:54em}"
    # a table wider (or longer) than the page scrolls in its own box, its header row in view
    ".scroll{overflow:auto;max-height:85vh;margin:1em 0}thead{position:sticky;top:0}"
    "table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "td{white-space:nowrap}td.text{white-space:normal;min-width:16em;text-align:left}"  # names and numbers on one line
    "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%;height:auto}"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
)


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
        """One self-contained page: figures inlined, each at FIGURE_PX_PER_INCH (at most the page's width), and
        every table in its own scrolling box."""
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style>",
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
                parts.append(_table_html(x))
            elif kind == "img":
                parts.append(f"<figure>{_img_tag(x[0].read_bytes(), x[1])}</figure>")
            elif kind == "code":
                parts.append("<pre><code>" + html.escape("\n".join(x)) + "</code></pre>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def png_size(data: bytes) -> tuple[int, int, float | None]:
    """(width, height) in pixels of a PNG and its resolution in dots per inch (its pHYs chunk; matplotlib
    writes the savefig dpi there), None when it records none. ValueError when `data` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"pHYs" and length == 9:
            x_per_unit, _, unit = struct.unpack(">IIB", data[pos + 8 : pos + 17])
            return width, height, x_per_unit * 0.0254 if unit == 1 and x_per_unit > 0 else None
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return width, height, None


def _table_html(df: Any) -> str:
    """The table in its scrolling box; a cell of more than LONG_CELL characters (a sentence, not a name or a
    number) may wrap at its spaces, the others stay on one line (a name wrapped at its hyphens reads badly)."""
    table = df.to_html(index=False, escape=True, na_rep="", border=0)
    table = re.sub(f"<td>([^<]{{{LONG_CELL + 1},}})</td>", r'<td class="text">\1</td>', table)
    return f'<div class="scroll">{table}</div>'


def _img_tag(data: bytes, alt: str) -> str:
    """The <img> of an inlined PNG, sized to FIGURE_PX_PER_INCH when the PNG records its dpi (the page's CSS
    narrows it to the page, keeping its aspect): the same text size in every figure, however wide."""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    try:
        width, height, dpi = png_size(data)
    except ValueError:
        return f'<img alt="{html.escape(alt)}" src="{src}">'
    scale = FIGURE_PX_PER_INCH / dpi if dpi else 1.0
    return (f'<img alt="{html.escape(alt)}" width="{round(width * scale)}" height="{round(height * scale)}" '
            f'src="{src}">')
