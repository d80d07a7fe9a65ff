"""A self-contained HTML report: figures embedded as base64 PNG, tables as HTML.

One file a researcher can open, mail or archive; nothing it shows lives
elsewhere. Built from matplotlib figures and pandas tables, no template engine.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right} th{background:#f0f0f0} td:first-child,th:first-child{text-align:left}
img{max-width:100%;box-sizing:border-box;border:1px solid #ddd;margin:.4em 0} figure{margin:1em 0} .verdict{background:#f7f7e8;border-left:4px solid #b8a000;
padding:.2em 1em} .verdict p{margin:.5em 0} .ok{color:#1a7f37} .bad{color:#b42318} .note{color:#666;font-size:.9em}
"""


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_to_data_uri(fig, path: Path | None = None) -> str:
    """Render a matplotlib figure once to PNG, optionally also write it to ``path``,
    close it, and return its data URI."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    png = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    return png_data_uri(png)


@dataclass
class Section:
    """One report section: a title, paragraphs, figures (data URIs) and tables."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (data uri, caption)
    tables: list[tuple[pd.DataFrame, str]] = field(default_factory=list)  # (table, caption)
    css_class: str = ""

    def html(self) -> str:
        parts = [f"<h2>{html.escape(self.title)}</h2>"]
        paragraphs = "".join(f"<p>{p}</p>" for p in self.paragraphs)
        parts.append(f"<div class='{self.css_class}'>{paragraphs}</div>" if self.css_class else paragraphs)
        for i, (df, caption) in enumerate(self.tables):
            parts.append(f"<p class='note'>{html.escape(caption)}</p>" if caption else "")
            table_id = f"t-{re.sub(r'[^a-z0-9]+', '-', self.title.lower()).strip('-')}-{i}"
            parts.append(_column_style(df, table_id))
            parts.append(df.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}",
                                    formatters=_column_formats(df), border=0, escape=True, table_id=table_id))
        for uri, caption in self.figures:
            parts.append(f"<figure><img src='{uri}' alt='{html.escape(caption)}'>"
                         f"<figcaption class='note'>{html.escape(caption)}</figcaption></figure>")
        return "\n".join(parts)


def column_decimals(values) -> int | None:
    """Decimals for a float column printed in one fixed format: 3, or 4 when its smallest nonzero value
    is below 0.1 (3 significant digits there); None (keep ``.4g``) when the column is all integers, empty, or spans
    magnitudes fixed decimals cannot show (a value below 1e-3 or at least 1e3, e.g. ``3.712e-11``)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None], float)
    v = np.abs(v[np.isfinite(v)])
    if not v.size or np.all(v == np.round(v)):
        return None
    nz = v[v > 0]
    if (nz < 1e-3).any() or (v >= 1e3).any():
        return None
    return 4 if nz.size and nz.min() < 0.1 else 3


def _column_formats(df: pd.DataFrame) -> dict:
    """Per float column, one fixed number of decimals (:func:`column_decimals`) so a column never mixes
    ``0.25`` and ``0.1041``; columns it leaves alone use the table's ``.4g``."""
    out = {}
    for col in df.columns:
        if not pd.api.types.is_float_dtype(df[col]):
            continue
        d = column_decimals(df[col].tolist())
        if d is not None:
            out[col] = lambda v, d=d: "–" if v is None or v != v else f"{v:.{d}f}"
    return out


def _column_style(df: pd.DataFrame, table_id: str) -> str:
    """Words read left-aligned: a ``<style>`` aligning the table's text columns (run names, notes) left
    and keeping short text (names, intervals such as ``[0.086, 0.227]``) and every number on one line;
    numbers stay right-aligned."""
    rules = []
    for k, col in enumerate(df.columns, start=1):
        if pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            # a number is one token: 3.712e-11 must not break at its minus sign
            rules.append(f"#{table_id} td:nth-child({k}){{white-space:nowrap}}")
            continue
        values = [str(v) for v in df[col] if isinstance(v, str)]
        words = any(re.search(r"[A-Za-z]{3}", v) for v in values)
        short = max((len(v) for v in values), default=0) <= 24
        if words:
            rules.append(f"#{table_id} td:nth-child({k}),#{table_id} th:nth-child({k}){{text-align:left}}")
        if short:
            rules.append(f"#{table_id} td:nth-child({k}){{white-space:nowrap}}")
    return f"<style>{''.join(rules)}</style>" if rules else ""


def write_report(path: Path, title: str, sections: list[Section], preamble: str = "") -> Path:
    """Write a self-contained HTML report to ``path`` (atomically) and return the path."""
    body = "\n".join(s.html() for s in sections)
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
           f"<p class='note'>{preamble}</p>{body}</body></html>")
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path
