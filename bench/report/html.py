"""The report as ONE self-contained HTML file: inline CSS, figures embedded as data URIs, no external
reference (a Content-Security-Policy forbids any), and a tiny inline self-check that records on
<body> how many images loaded, any script or console error, and which tables scroll sideways or are
cut off by the page (read by the browser test). Headers wrap, so most tables fit the page; a wider
one scrolls inside its own box, never past the page's edge."""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from bench.report.document import Document, Figure, Image, Paragraph, Section, Table

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif", ".webp": "image/webp"}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 1280px; padding: 0 24px 48px; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 40px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
h3 { margin: 24px 0 8px; font-size: 15px; }
.subtitle { color: #555; margin: 0 0 16px; }
nav ul { columns: 2; padding-left: 18px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 4px 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 4px 10px; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; font-weight: 600; vertical-align: bottom; white-space: normal;
     min-width: 4.5em; }
#headline table { font-size: 12.5px; } #headline th, #headline td { padding: 4px 6px; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
td.text { text-align: left; white-space: normal; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px;
          vertical-align: -1px; }
.legend span.item { margin-right: 14px; white-space: nowrap; }
ul.notes { color: #555; font-size: 12.5px; margin: 4px 0 0; padding-left: 18px; }
figure { margin: 12px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12.5px; margin-top: 4px; }
footer { margin-top: 40px; color: #777; font-size: 12px; }
"""

# Runs before the body is parsed: collects errors, then on load counts the images that decoded.
SELF_CHECK = """
(function () {
  var errors = [];
  function note(text) { errors.push(String(text)); }
  window.addEventListener("error", function (e) {
    var t = e.target;
    note(e.message || ("failed to load " + ((t && (t.currentSrc || t.src || t.href)) || "resource")));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) {
    note("blocked by the content security policy: " + e.blockedURI);
  });
  var consoleError = console.error;
  console.error = function () {
    note(Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var images = document.images, loaded = 0, failed = [];
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { loaded++; } else { failed.push(images[i].alt); }
    }
    if (failed.length) { note("images not loaded: " + failed.join(", ")); }
    // A table is in a scrolling box (its columns reachable by that box's own scroll) whose right
    // edge is inside the page; a table, or box, past the page's right edge is cut off: an error.
    var tables = document.querySelectorAll("table"), page = document.documentElement.clientWidth;
    var scrolling = [];
    for (var t = 0; t < tables.length; t++) {
      var box = tables[t].parentElement, title = box.previousElementSibling;
      var name = title ? title.textContent : "table " + (t + 1);
      var scrolls = /auto|scroll/.test(getComputedStyle(box).overflowX);
      var edge = (scrolls ? box : tables[t]).getBoundingClientRect().right;
      if (edge > page + 0.5) { note("table cut off by the page: " + name); }
      else if (scrolls && box.scrollWidth > box.clientWidth) { scrolling.push(name); }
    }
    var body = document.body;
    body.setAttribute("data-images", images.length);
    body.setAttribute("data-images-loaded", loaded);
    body.setAttribute("data-tables", tables.length);
    body.setAttribute("data-tables-scrolling", scrolling.join("|"));
    body.setAttribute("data-errors", errors.length);
    document.getElementById("self-check-errors").textContent = errors.join("\\n");
    document.getElementById("self-check").textContent =
      "Self-check: " + loaded + " of " + images.length + " images loaded, " + tables.length +
      " tables (" + scrolling.length + " scroll sideways), " + errors.length + " errors.";
    body.setAttribute("data-checked", "done");
  });
})();
"""


def data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def pixel_width(path: Path) -> int | None:
    """A raster image's width in pixels (figures are shown at their PNG's size, SVG or not)."""
    if path.suffix.lower() == ".svg":
        return None
    try:
        with PILImage.open(path) as image:
            return image.width
    except (OSError, UnidentifiedImageError):  # not decodable: shown at the browser's default size
        return None


def swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{escape(colour)}"></span>'


def table_html(table: Table, palette: dict[str, str]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for method, row in zip(table.methods, table.rows):
        cells = []
        for i, value in enumerate(row):
            text = escape(str(value))
            if i == 0 and method is not None and method in palette:
                text = swatch(palette[method]) + text
            long = len(str(value)) > 40  # reasons, settings: left-aligned and wrapped
            cells.append(f'<td class="text">{text}</td>' if long else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in table.notes)
    return (f"<h3>{escape(table.title)}</h3><div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>"
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def section_html(section: Section, palette: dict[str, str]) -> str:
    parts = [f'<section id="{escape(section.anchor)}"><h2>{escape(section.title)}</h2>']
    if section.methods:
        items = "".join(f'<span class="item">{swatch(palette[m])}{escape(m)}</span>'
                        for m in section.methods if m in palette)
        parts.append(f'<p class="legend">{items}</p>')
    for block in section.blocks:
        if isinstance(block, Paragraph):
            parts.append(f"<p>{escape(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(table_html(block, palette))
        elif isinstance(block, (Figure, Image)):
            path = block.svg if isinstance(block, Figure) else block.path
            width = pixel_width(block.png if isinstance(block, Figure) else block.path)
            size = f' width="{width}"' if width else ""
            parts.append(f"<h3>{escape(block.title)}</h3><figure><img src=\"{data_uri(path)}\"{size} "
                         f"alt=\"{escape(block.title)}\"><figcaption>{escape(block.caption)}"
                         f"</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(doc: Document) -> str:
    toc = "".join(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>' for s in doc.sections)
    sections = "\n".join(section_html(s, doc.palette) for s in doc.sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{escape(doc.title)}</title>
<style>{CSS}</style>
<script>{SELF_CHECK}</script>
</head>
<body>
<h1>{escape(doc.title)}</h1>
<p class="subtitle">{escape(doc.subtitle)}</p>
<nav><ul>{toc}</ul></nav>
{sections}
<footer><p id="self-check">Self-check did not run (scripts disabled).</p>
<pre id="self-check-errors" hidden></pre></footer>
</body>
</html>
"""
