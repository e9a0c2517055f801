"""One self-contained HTML page: inline CSS, plotly.js embedded once, images as data URIs.

Every page records JavaScript errors in ``window.vlocErrors`` (installed before any other
script) and sets ``document.body.dataset.rendered`` when its figures are drawn, so a headless
browser can tell a page that rendered from one that broke.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from vloc.io.files import write_text_atomic

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; margin: 0.8em 0; }
.card.failed { border-left: 6px solid #c62828; } .card.localized { border-left: 6px solid #2e7d32; }
.status { font-weight: bold; } .failed .status { color: #c62828; } .localized .status { color: #2e7d32; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; } .thumbs figure { margin: 0; font-size: 0.75em; text-align: center; }
.thumbs img { height: 72px; display: block; } .matchimg, .queryimg { max-width: 100%; margin-top: 0.4em; }
.kv { color: #555; font-size: 0.9em; } .note { color: #666; font-size: 0.85em; }
"""

ERROR_HOOK = """window.vlocErrors = [];
window.addEventListener('error', function (e) { window.vlocErrors.push(String(e.message)); });
window.addEventListener('unhandledrejection', function (e) { window.vlocErrors.push(String(e.reason)); });"""

RENDERED = """window.addEventListener('load', function () {
  var plots = Array.prototype.slice.call(document.querySelectorAll('.js-plotly-plot'));
  Promise.all(plots.map(function (p) { return p._fullLayout ? Promise.resolve() : new Promise(function (r) {
    p.on('plotly_afterplot', r); }); })).then(function () { document.body.dataset.rendered = 'yes'; });
});"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def jpeg_data_uri(image: np.ndarray, max_side: int, quality: int = 75) -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> a ``data:image/jpeg`` URI, resized to at most ``max_side``."""
    from PIL import Image

    im = Image.fromarray(image)
    scale = max_side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(fig) -> str:
    """A plotly figure as a ``<div>`` (the page embeds plotly.js once)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def table_html(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_page(path: Path | str, title: str, body: str, data: dict | None = None) -> Path:
    """Write the page atomically; ``data`` becomes ``window.vlocData`` (JSON) for the page's scripts."""
    from plotly.offline import get_plotlyjs

    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/") if data is not None else ""
    data_js = f"window.vlocData = {text};" if data is not None else ""
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<script>{ERROR_HOOK}</script><style>{CSS}</style><script>{get_plotlyjs()}</script>"
            f"<script>{data_js}</script></head><body>\n{body}\n<script>{RENDERED}</script></body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, page)
    return path
