"""The HTML of `imgcomp report`'s page: one file with its style, its script (the sortable
table, the viewers' zoom, pan and before/after slider) and its plots and images as data
URIs, so that it opens from disk with no server and no network."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgcomp.evaluation.crop_figure import Panel
from imgcomp.evaluation.rd_figure import (
    METRIC_LABELS,
    REAL_BPP_LABEL,
    default_x_range,
    default_y_range,
    rd_figure,
)
from imgcomp.evaluation.results import Curve, bd_rate_table


@dataclass(frozen=True)
class Viewer:
    """One image's panels: the original, then per job ours and the codecs matched to it."""

    name: str
    original: Panel
    ours: list[Panel]  # per job
    codecs: list[list[Panel]]  # per job, per codec

    @property
    def panels(self) -> list[Panel]:
        return [self.original, *(p for ours, codecs in zip(self.ours, self.codecs, strict=True)
                                 for p in (ours, *codecs))]

    @property
    def compare(self) -> tuple[int, int]:
        """The panels the before/after slider starts with: our first job against the first
        codec matched to it, else the original."""
        return 1, 2 if self.codecs[0] else 0


def png_data_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def rd_plot_uri(metric: str, points: Curve, codecs: Sequence[Curve], paper: Curve | None,
                dataset: str) -> str:
    """One RD plot as an SVG data URI: our jobs' points against the codecs (and the paper)."""
    curves = [points, *codecs, *([paper] if paper else [])]
    x_range = default_x_range(points)
    y_range = default_y_range(metric, curves, x_range, points)
    buf = io.BytesIO()
    with rd_figure(points, points, codecs, paper, metric=metric,
                   title=f"{dataset}: {METRIC_LABELS[metric]} vs real bpp", x_range=x_range,
                   y_range=y_range, paper_figure=False, usetex=False,
                   x_label=REAL_BPP_LABEL) as (fig, _):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def comparison_html(points: dict[str, Curve], anchors: dict[str, list[Curve]]) -> str:
    """Ours against each anchor (codec, paper): per job, our metric minus the anchor's curve
    (interpolated linearly) at our real bpp; with >= 2 jobs, the BD-rates too."""
    cells: dict[str, dict[str, str]] = {}  # anchor -> column -> text
    columns: list[str] = []
    with_bd = len(points["ms-ssim"].bpp) >= 2
    for metric, digits in (("ms-ssim", 4), ("psnr", 2)):
        ours = points[metric]
        if with_bd:
            columns.append(f"BD-rate ({METRIC_LABELS[metric]})")
            for row in bd_rate_table(ours, anchors[metric], metric):
                cells.setdefault(row.anchor, {})[columns[-1]] = (
                    f"{row.bd_rate_percent:+.1f} %" if np.isfinite(row.bd_rate_percent)
                    else f"n/a: {row.note}")
        for label, bpp, value in zip(ours.point_labels, ours.bpp, ours.metric, strict=True):
            columns.append(f"{METRIC_LABELS[metric]} of {label} minus the anchor's at "
                           f"{bpp:.3f} bpp")
            for anchor in anchors[metric]:
                theirs = np.interp(bpp, anchor.bpp, anchor.metric, left=np.nan, right=np.nan)
                cells.setdefault(anchor.label, {})[columns[-1]] = (
                    f"{value - theirs:+.{digits}f}" if np.isfinite(theirs)
                    else "outside its curve")
    if not cells:
        return "<p>No classical codec results to compare with.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join(f"<tr><td>{html.escape(anchor)}</td>"
                   + "".join(f"<td class=num>{html.escape(by_column.get(c, '-'))}</td>"
                             for c in columns) + "</tr>"
                   for anchor, by_column in cells.items())
    return (f"<table class=bd><thead><tr><th>ours against</th>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def viewer_html(index: int, viewer: Viewer) -> str:
    height, width = viewer.panels[0].image.shape[:2]
    figures = []
    for panel in viewer.panels:
        measures = ("lossless" if panel.bpp is None else
                    f"{panel.bpp:.3f} bpp · MS-SSIM {panel.ms_ssim:.4f} · {panel.psnr:.2f} dB")
        caption = f"{html.escape(panel.label)}<br><span class=m>{measures}</span>"
        figures.append(f'<figure class=panel data-label="{html.escape(panel.label)}">'
                       f"<figcaption>{caption}</figcaption>"
                       f'<div class=vp><img src="{png_data_uri(panel.image)}" '
                       f'alt="{html.escape(panel.label)}"></div></figure>')
    zoom = "".join(f'<button type=button data-zoom="{z}">{"fit" if z == 0 else f"{z}×"}</button>'
                   for z in (0, 1, 2, 4))
    a, b = viewer.compare
    return f"""
<section class=viewer id="view-{index}" data-width="{width}" data-height="{height}"
 data-a="{a}" data-b="{b}">
<h3>{html.escape(viewer.name)} <small>{width}×{height}</small></h3>
<div class=controls>zoom {zoom} <span class=hint>drag to pan; every view follows</span></div>
<div class=grid>{"".join(figures)}</div>
<div class=controls>before/after: <select class=sel-a></select> left,
 <select class=sel-b></select> right</div>
<div class="vp cmp"><div class=stack><img class=under alt=""><img class=over alt="">
<div class=line></div></div></div>
<input class=split type=range min=0 max=100 value=50 aria-label="split">
</section>"""


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:0 16px;
color:#222;background:#fff}
h1{font-size:22px;margin:16px 0 4px}h2{font-size:18px;margin:24px 0 8px}
h3{font-size:15px;margin:20px 0 6px}small,.hint,.m{color:#666}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:12px}.plots img{width:100%}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;border-bottom:1px solid #ddd}
th{background:#f3f3f3;text-align:left;position:sticky;top:0}td.num{text-align:right;
font-variant-numeric:tabular-nums}
#rows th{cursor:pointer;user-select:none}#rows th.asc:after{content:" ▲"}
#rows th.desc:after{content:" ▼"}.scroll{max-height:240px;overflow:auto;display:inline-block;
border:1px solid #ddd}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:8px}
figure{margin:0}figcaption{font-size:12px}
.vp{overflow:hidden;background:#eee;border:1px solid #ccc;max-height:320px}
.vp.zoomed{overflow:auto;cursor:grab}.vp img{display:block;width:100%}
.vp.zoomed img{image-rendering:pixelated}
.cmp{margin-top:6px;max-height:520px}.stack{position:relative}
.stack .over{position:absolute;top:0;left:0}
.stack .line{position:absolute;top:0;bottom:0;width:2px;margin-left:-1px;background:#fff;
box-shadow:0 0 2px #000;pointer-events:none}
.split{width:100%}.controls{margin:6px 0}button.on{font-weight:bold}
"""

SCRIPT = r"""
"use strict";
(() => {
  // Per-image table: rows rendered from the JSON block; a click on a header sorts by it.
  const spec = JSON.parse(document.getElementById("rows-data").textContent);
  const table = document.getElementById("rows");
  const head = table.tHead.rows[0];
  const body = table.tBodies[0];
  const cell = (value, col) => {
    const td = document.createElement("td");
    if (col.digits === undefined) {
      const link = spec.links[value];
      if (col.label === "image" && link) {
        const a = document.createElement("a");
        a.href = "#" + link;
        a.textContent = value;
        td.appendChild(a);
      } else {
        td.textContent = value;
      }
    } else {
      td.className = "num";
      td.textContent = value === null ? "–" : value.toFixed(col.digits);
    }
    return td;
  };
  const sortBy = (i, dir) => {
    const sign = dir === "asc" ? 1 : -1;
    const rows = spec.rows.slice().sort((a, b) => {
      const x = a[i], y = b[i];
      if (x === y) return 0;
      if (x === null) return 1;  // empty cells last, either way
      if (y === null) return -1;
      return sign * (typeof x === "number" ? x - y
                     : String(x).localeCompare(String(y), undefined, {numeric: true}));
    });
    body.replaceChildren(...rows.map(row => {
      const tr = document.createElement("tr");
      row.forEach((value, c) => tr.appendChild(cell(value, spec.columns[c])));
      return tr;
    }));
    table.dataset.sortCol = i;
    table.dataset.sortDir = dir;
    for (const th of head.cells) th.className = Number(th.dataset.col) === i ? dir : "";
  };
  spec.columns.forEach((col, i) => {
    const th = document.createElement("th");
    th.textContent = col.label;
    th.dataset.col = i;
    th.addEventListener("click", () => sortBy(
      i, Number(table.dataset.sortCol) === i && table.dataset.sortDir === "asc" ? "desc" : "asc"));
    head.appendChild(th);
  });
  sortBy(0, "asc");

  // Viewers: one zoom for every view of an image; dragging one view pans all of them.
  const setupViewer = viewer => {
    const panels = [...viewer.querySelectorAll(".panel")];
    const images = panels.map(p => p.querySelector("img"));
    const selA = viewer.querySelector(".sel-a"), selB = viewer.querySelector(".sel-b");
    const over = viewer.querySelector(".over"), under = viewer.querySelector(".under");
    const line = viewer.querySelector(".line"), split = viewer.querySelector(".split");
    for (const sel of [selA, selB]) {
      panels.forEach((p, i) => sel.add(new Option(p.dataset.label, String(i))));
    }
    selA.value = viewer.dataset.a;
    selB.value = viewer.dataset.b;
    // The slider's images share the panels' data (no second copy in the file).
    const pick = () => {
      over.src = images[Number(selA.value)].src;
      under.src = images[Number(selB.value)].src;
    };
    const cut = () => {
      over.style.clipPath = `inset(0 ${100 - split.value}% 0 0)`;
      line.style.left = split.value + "%";
    };
    selA.addEventListener("change", pick);
    selB.addEventListener("change", pick);
    split.addEventListener("input", cut);
    pick();
    cut();

    const views = [...viewer.querySelectorAll(".vp")];
    const width = Number(viewer.dataset.width), height = Number(viewer.dataset.height);
    const zoom = z => {
      const first = views[0];
      const cx = (first.scrollLeft + first.clientWidth / 2) / Math.max(first.scrollWidth, 1);
      const cy = (first.scrollTop + first.clientHeight / 2) / Math.max(first.scrollHeight, 1);
      for (const view of views) {
        view.firstElementChild.style.width = z ? `${width * z}px` : "";
        view.classList.toggle("zoomed", z > 0);
      }
      for (const view of views) {  // keep the same point in the middle
        view.scrollLeft = cx * width * z - view.clientWidth / 2;
        view.scrollTop = cy * height * z - view.clientHeight / 2;
      }
      for (const b of viewer.querySelectorAll("button[data-zoom]")) {
        b.classList.toggle("on", Number(b.dataset.zoom) === z);
      }
    };
    for (const b of viewer.querySelectorAll("button[data-zoom]")) {
      b.addEventListener("click", () => zoom(Number(b.dataset.zoom)));
    }
    for (const view of views) {
      view.addEventListener("scroll", () => {
        for (const other of views) {
          if (other !== view) {
            other.scrollLeft = view.scrollLeft;
            other.scrollTop = view.scrollTop;
          }
        }
      });
      let drag = null;
      view.addEventListener("pointerdown", e => {
        if (!view.classList.contains("zoomed")) return;
        drag = {x: e.clientX, y: e.clientY, left: view.scrollLeft, top: view.scrollTop};
        view.setPointerCapture(e.pointerId);
        e.preventDefault();
      });
      view.addEventListener("pointermove", e => {
        if (!drag) return;
        view.scrollLeft = drag.left - (e.clientX - drag.x);
        view.scrollTop = drag.top - (e.clientY - drag.y);
      });
      view.addEventListener("pointerup", () => { drag = null; });
    }
    zoom(1);
  };
  document.querySelectorAll(".viewer").forEach(setupViewer);
  document.body.dataset.ready = "1";
})();
"""


def page_html(title: str, summary: str, plots: Sequence[str], bd_html: str, table: dict,
              viewers: Sequence[Viewer]) -> str:
    plot_imgs = "".join(f'<img src="{uri}" alt="rate-distortion plot">' for uri in plots)
    # "</" inside the JSON would end the script element early.
    rows_json = json.dumps(table, allow_nan=False).replace("</", "<\\/")
    viewers_html = ("".join(viewer_html(i, v) for i, v in enumerate(viewers)) if viewers
                    else "<p>No viewer (--max_images 0).</p>")
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>
<meta name=viewport content="width=device-width,initial-scale=1">
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{summary}</p>
<h2>Rate-distortion</h2><div class=plots>{plot_imgs}</div>
{bd_html}
<h2>Images</h2><p class=hint>One row per image and job; click a header to sort. Codec columns:
the setting with the real file size closest to ours, for the images with a viewer below.</p>
<div class=scroll><table id=rows><thead><tr></tr></thead><tbody></tbody></table></div>
<noscript><p>The table and the viewers need JavaScript.</p></noscript>
<h2>Side by side at about the same real bpp</h2>
{viewers_html}
<script type="application/json" id="rows-data">{rows_json}</script>
<script>{SCRIPT}</script>
</body></html>
"""
