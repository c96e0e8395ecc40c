"""The upgrade check's report as text, JSON and a self-contained HTML page (an inline SVG plot of the
largest difference per row; no scripts, no external assets)."""

from __future__ import annotations

import html
import json
import math
from typing import Any, Dict, List

from .upgrade import UpgradeReport

__all__ = ["render_html", "render_json", "render_text"]


def render_json(report: UpgradeReport) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n"


def _side_lines(name: str, side: Dict[str, Any]) -> List[str]:
    env = side.get("environment") or {}
    where = env.get("kind") or "?"
    if env.get("python"):
        where += ", Python %s" % env["python"]
    if env.get("source"):
        where += ", %s" % env["source"]
    lines = ["%s: %s" % (name, where)]
    if side.get("error"):
        lines.append("  FAILED: %s" % side["error"])
        return lines
    latency = side.get("latency_ms") or {}
    lines.append(
        "  load %ss, latency median %s ms (p90 %s ms, %s calls), memory %s MB"
        % (side.get("load_seconds"), latency.get("median"), latency.get("p90"), latency.get("calls", 0),
           side.get("memory_mb"))
    )  # fmt: skip
    for warning in side.get("warnings") or []:
        lines.append("  warned at load: %s" % warning)
    return lines


def render_text(report: UpgradeReport) -> str:
    doc = report.to_dict()
    rows = doc["rows"]
    lines = [
        "model %s: %s against candidate %s" % (doc["model"], doc["verdict"].upper(), doc["candidate"]),
        "inputs: %s" % doc["inputs"],
        "rows compared: %d — identical %d, close %d (rtol %g, atol %g), different %d; largest difference %g"
        % (
            rows["compared"],
            rows["identical"],
            rows["close"],
            doc["tolerance"]["rtol"],
            doc["tolerance"]["atol"],
            rows["different"],
            doc["max_abs_diff"],
        ),
    ]
    lines += _side_lines("current", doc["current"]) + _side_lines("candidate", doc["candidate_side"])
    for d in doc["first_differences"]:
        lines.append(
            "different: request %s row %d output %s: current %s, candidate %s, input %s"
            % (
                d["request"],
                d["row"],
                d["output"],
                _short(d["current"]),
                _short(d["candidate"]),
                _short(d["input"]),
            )
        )
    for e in doc["errors"][:10]:
        lines.append("error (%s side), request %s: %s" % (e["side"], e["request"], e["error"]))
    return "\n".join(lines) + "\n"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_COLOURS = {"identical": "#2e7d32", "close": "#f9a825", "different": "#c62828"}


def _plot(report: UpgradeReport, width: int = 720, height: int = 240) -> str:
    points = report.row_diffs
    if not points:
        return "<p>No rows were compared.</p>"
    finite = [d for _, _, d, _ in points if d > 0 and math.isfinite(d)]
    low = math.log10(min(finite)) if finite else -12.0
    high = math.log10(max(finite)) if finite else 0.0
    if high - low < 1:
        low, high = low - 0.5, high + 0.5
    pad = 40
    marks = []
    for i, (request, row, diff, kind) in enumerate(points):
        x = pad + (width - 2 * pad) * (i / max(1, len(points) - 1))
        if diff == 0:
            y = float(height - pad)
        elif not math.isfinite(diff):
            y = pad / 2
        else:
            y = height - pad - (height - 2 * pad) * (math.log10(diff) - low) / (high - low)
        marks.append(
            '<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s row %d: %s (%g)</title></circle>'
            % (x, y, _COLOURS[kind], html.escape(request), row, kind, diff)
        )
    axis = (
        '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>'
        % (pad, height - pad, width - pad, height - pad)
        + '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>' % (pad, pad / 2, pad, height - pad)
        + '<text x="%d" y="%d" font-size="11">rows, in order</text>' % (width // 2 - 30, height - 8)
        + '<text x="4" y="14" font-size="11">|current - candidate| (log scale; 0 at the bottom)</text>'
        + '<text x="4" y="%d" font-size="10">1e%.0f</text>' % (height - pad - 4, low)
        + '<text x="4" y="%d" font-size="10">1e%.0f</text>' % (pad + 4, high)
    )
    return '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img">%s%s</svg>' % (
        width, height, axis, "".join(marks)
    )  # fmt: skip


def render_html(report: UpgradeReport) -> str:
    doc = report.to_dict()
    text = html.escape(render_text(report))
    verdict = doc["verdict"]
    colour = "#2e7d32" if doc["ok"] else "#c62828"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>envserve check-upgrade: %s</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}pre{background:#f6f6f6;padding:1em;"
        "white-space:pre-wrap}.verdict{color:%s;font-weight:bold}</style></head><body>"
        "<h1>Model <code>%s</code>: <span class='verdict'>%s</span></h1>"
        "<h2>Largest difference per row</h2>%s<h2>Report</h2><pre>%s</pre>"
        "<h2>JSON</h2><pre>%s</pre></body></html>\n"
        % (
            html.escape(doc["model"]),
            colour,
            html.escape(doc["model"]),
            html.escape(verdict),
            _plot(report),
            text,
            html.escape(render_json(report)),
        )
    )
