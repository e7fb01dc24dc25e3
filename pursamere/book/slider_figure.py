"""A figure whose sliders switch precomputed views in the browser: no kernel, one shared plotly.js.

A rendered book has no kernel, so a slider cannot recompute anything. Instead every view the
sliders can reach is computed once, when the notebook runs (the chapters' figures are in
:mod:`pursamere.book.sliders`). A :class:`SliderFigure` holds those frames and renders as a
Plotly figure with one HTML range input per setting; moving one swaps the precomputed data into
the figure.

The figure needs ``plotly.js``. The book ships ONE copy of it (``_static/plotly.min.js``, put
there by :mod:`pursamere.book.offline` on the pages that have a slider figure); the figure's
own HTML carries only its data and a few lines of script. Opened elsewhere (a Jupyter
notebook, which has no plotly.js), the figure shows a one-line note instead.

Data are stored compactly: each array is quantised to 16 bits over its own range (a relative
error below 2e-5 of that range, invisible in a figure) and base64-encoded. A part of the
figure that depends on only some sliders (the landscape does not depend on ρ) is stored once
per combination of THOSE sliders.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["Slider", "Part", "SliderFigure", "decode"]

_NAN_CODE = 65535  # the uint16 code of a NaN (a break between two lines of one trace)


@dataclass(frozen=True)
class Slider:
    """One setting the reader can move.

    Args:
        name: the keyword the part functions receive.
        label: what the reader sees beside the slider (``"σ"``).
        values: the grid of values, in slider order (≥ 2).
        start: index of the value shown first.
    """

    name: str
    label: str
    values: tuple
    start: int = 0

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) < 2:
            raise ValueError(f"Slider {self.name!r}: needs at least 2 values, got {len(self.values)}")
        if not 0 <= self.start < len(self.values):
            raise ValueError(f"Slider {self.name!r}: start index {self.start} outside 0..{len(self.values) - 1}")


@dataclass
class Part:
    """Some traces of the figure and how they change with some of the sliders.

    Args:
        traces: indices of the figure's traces this part sets.
        depends: names of the sliders it depends on (the others leave it unchanged).
        compute: called with those sliders' values as keywords; returns one dict of trace
            properties (``x``, ``y``, ``z``, ``text``, ...) per index in ``traces``.
    """

    traces: tuple
    depends: tuple
    compute: Callable[..., Sequence[dict]]


def _encode(value):
    """Arrays → {q: base64 uint16, lo, hi, shape}; everything else unchanged (JSON-able)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        return value
    a = np.asarray(value, dtype=np.float64)
    ok = np.isfinite(a)
    lo = float(a[ok].min()) if ok.any() else 0.0
    hi = float(a[ok].max()) if ok.any() else 0.0
    scale = (_NAN_CODE - 1) / (hi - lo) if hi > lo else 0.0
    q = np.where(ok, np.rint((np.where(ok, a, lo) - lo) * scale), _NAN_CODE).astype("<u2")
    return {"q": base64.b64encode(q.tobytes()).decode("ascii"), "lo": lo, "hi": hi, "shape": list(a.shape)}


def _jsonable(obj):
    """The static part of a figure as plain JSON types (arrays as lists, 7 significant digits)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (float, np.floating)):
        return float(f"{float(obj):.7g}")
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def decode(enc) -> np.ndarray:
    """Inverse of the figure's array encoding (what the browser does), for tests."""
    q = np.frombuffer(base64.b64decode(enc["q"]), dtype="<u2").astype(np.float64)
    span = enc["hi"] - enc["lo"]
    out = enc["lo"] + (span * q / (_NAN_CODE - 1) if span > 0 else 0.0 * q)
    out[q == _NAN_CODE] = np.nan
    return out.reshape(enc["shape"])


class SliderFigure:
    """A Plotly figure whose sliders switch between precomputed frames (no kernel needed).

    Args:
        figure: the Plotly figure as a dict (``data`` list and ``layout``); the parts fill in
            the traces that change.
        sliders: the settings, in the order they are shown.
        parts: what each combination of settings sets (see :class:`Part`).
        note: one line shown under the sliders.
        height: of the plot, in CSS pixels.
    """

    def __init__(self, figure: dict, sliders: Sequence[Slider], parts: Sequence[Part], note: str = "",
                 height: int = 480):
        self.figure = _jsonable(figure)
        self.sliders, self.parts, self.note, self.height = list(sliders), list(parts), note, height
        names = [s.name for s in self.sliders]
        if len(set(names)) != len(names):
            raise ValueError(f"SliderFigure: slider names must be distinct, got {names}")
        n_traces = len(figure["data"])
        self.frames = []
        for part in self.parts:
            unknown = set(part.depends) - set(names)
            if unknown:
                raise ValueError(f"SliderFigure: a part depends on unknown sliders {sorted(unknown)}")
            if any(not 0 <= t < n_traces for t in part.traces):
                raise ValueError(f"SliderFigure: a part sets traces {part.traces}, the figure has {n_traces}")
            axes = [self._slider(n) for n in part.depends]
            frames = {}
            for idx in itertools.product(*(range(len(s.values)) for s in axes)):
                props = list(part.compute(**{s.name: s.values[i] for s, i in zip(axes, idx)}))
                if len(props) != len(part.traces):
                    raise ValueError(f"SliderFigure: a part for traces {part.traces} returned {len(props)} dicts")
                frames[",".join(map(str, idx))] = [{k: _encode(v) for k, v in p.items()} for p in props]
            self.frames.append(frames)

    def _slider(self, name):
        return next(s for s in self.sliders if s.name == name)

    @property
    def n_views(self) -> int:
        """How many distinct settings the sliders can reach."""
        return int(np.prod([len(s.values) for s in self.sliders]))

    def spec(self) -> dict:
        """Everything the browser needs, as one JSON-able dict."""
        return {
            "figure": self.figure,
            "sliders": [{"name": s.name, "label": s.label, "start": s.start,
                         "text": [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in s.values]}
                        for s in self.sliders],
            "parts": [{"traces": list(p.traces), "depends": list(p.depends), "frames": f}
                      for p, f in zip(self.parts, self.frames)],
        }

    def html(self) -> str:
        """The figure as an HTML fragment (div, controls, data, and the script that switches frames)."""
        data = json.dumps(self.spec(), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
        uid = "pursamere-slider-" + hashlib.sha1(data.encode()).hexdigest()[:12]  # same data → same page
        rows = "".join(
            f'<label style="display:flex;align-items:center;gap:0.6em;margin:0.15em 0">'
            f'<span style="min-width:4.5em">{s.label}</span>'
            f'<input type="range" min="0" max="{len(s.values) - 1}" step="1" value="{s.start}" '
            f'data-slider="{s.name}" aria-label="{s.label}" style="flex:1;max-width:24em">'
            f'<output style="min-width:4em;font-family:monospace">{s.values[s.start]:g}</output></label>'
            for s in self.sliders)
        note = f'<p style="font-size:0.85em;margin:0.3em 0">{self.note}</p>' if self.note else ""
        return (
            f'<div id="{uid}" class="pursamere-slider" data-pursamere-slider="1">'
            f'<div class="ps-plot" style="width:100%;height:{self.height}px"></div>'
            f'<div class="ps-controls">{rows}</div>{note}'
            f'<p class="ps-fallback" style="font-size:0.85em">(Interactive figure: it runs in the built book, '
            f'which ships plotly.js. In Jupyter use the live sliders of this chapter instead.)</p>'
            f'<script type="application/json" class="ps-data">{data}</script>'
            f'<script>{_SCRIPT.replace("__ID__", uid)}</script></div>')

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:  # stable text (no address): executed notebooks do not change run to run
        axes = " × ".join(f"{s.label} ({len(s.values)})" for s in self.sliders)
        return f"<SliderFigure: {axes} = {self.n_views} views>"


# The browser side: decode a part's frame once (cached), copy its properties into the figure's
# traces, and redraw with Plotly.react. Kept small and dependency-free (plain ES5).
_SCRIPT = """(function () {
var root = document.getElementById("__ID__");
function decode(v) {
  if (v === null || typeof v !== "object" || !("q" in v)) return v;
  var bin = atob(v.q), n = bin.length / 2, flat = new Array(n), span = v.hi - v.lo;
  for (var i = 0; i < n; i++) {
    var u = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    flat[i] = u === 65535 ? null : v.lo + (span > 0 ? span * u / 65534 : 0);
  }
  if (v.shape.length !== 2) return flat;
  var rows = [], w = v.shape[1];
  for (var r = 0; r < v.shape[0]; r++) rows.push(flat.slice(r * w, (r + 1) * w));
  return rows;
}
function start() {
  if (!root || !window.Plotly) return;
  var spec = JSON.parse(root.querySelector("script.ps-data").textContent);
  root.querySelector(".ps-fallback").style.display = "none";
  var plot = root.querySelector(".ps-plot"), inputs = root.querySelectorAll("input[data-slider]");
  var cache = {}, revision = 0;
  function frame(p, key) {
    var id = p + ":" + key;
    if (!(id in cache)) {
      cache[id] = spec.parts[p].frames[key].map(function (props) {
        var out = {};
        for (var k in props) out[k] = decode(props[k]);
        return out;
      });
    }
    return cache[id];
  }
  function update() {
    var idx = {};
    for (var i = 0; i < inputs.length; i++) {
      var name = inputs[i].getAttribute("data-slider"), v = +inputs[i].value;
      idx[name] = v;
      var s = spec.sliders.filter(function (t) { return t.name === name; })[0];
      inputs[i].parentNode.querySelector("output").textContent = s.text[v];
    }
    spec.parts.forEach(function (part, p) {
      var key = part.depends.map(function (n) { return idx[n]; }).join(",");
      frame(p, key).forEach(function (props, j) {
        var trace = spec.figure.data[part.traces[j]];
        for (var k in props) trace[k] = props[k];
      });
    });
    spec.figure.layout.datarevision = ++revision;
    Plotly.react(plot, spec.figure.data, spec.figure.layout, {responsive: true, displaylogo: false});
    root.setAttribute("data-revision", String(revision));
  }
  for (var i = 0; i < inputs.length; i++) inputs[i].addEventListener("input", update);
  update();
}
if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();"""
