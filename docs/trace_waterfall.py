"""Draw one trace as a waterfall: `python docs/trace_waterfall.py SPANS.json OUT.png`.

SPANS.json is a list of exported spans (name, span_id, parent_span_id, start_ns, end_ns,
service, attributes) as bench/tracing_receiver.py writes them; `make bench` keeps one
registration's trace under bench/results/trace-*.json. Needs matplotlib (bench/requirements).
"""

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

COLOURS = {"server": "#4c72b0", "sql": "#8c8c8c", "job": "#dd8452", "smtp": "#55a868"}


def kind(span: dict[str, Any]) -> str:
    if "db.statement" in span["attributes"] or "db.query.text" in span["attributes"]:
        return "sql"
    if "job.id" in span["attributes"]:
        return "job"
    if span["name"].startswith("smtp"):
        return "smtp"
    return "server"


def label(span: dict[str, Any]) -> str:
    attributes = span["attributes"]
    sql = attributes.get("db.statement") or attributes.get("db.query.text")
    if sql:
        return " ".join(str(sql).split())[:60]
    if "job.id" in attributes:
        return f"{span['name']} (attempt {attributes['job.attempt']}, {attributes['job.outcome']})"
    if span["name"].startswith("smtp"):
        return f"{span['name']} {attributes.get('server.address')}: {attributes.get('smtp.result')}"
    return str(span["name"])


def ordered(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first from the root, children by start time: the order a tracing UI shows."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {span["span_id"] for span in spans}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(span)
    rows: list[tuple[int, dict[str, Any]]] = []

    def visit(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
            rows.append((depth, span))
            visit(span["span_id"], depth + 1)

    visit(None, 0)
    return rows


def draw(spans: list[dict[str, Any]], out: Path) -> None:
    rows = ordered(spans)
    start = min(span["start_ns"] for span in spans)
    fig, ax = plt.subplots(figsize=(11, 0.34 * len(rows) + 1.2))
    for y, (depth, span) in enumerate(rows):
        left = (span["start_ns"] - start) / 1e6
        width = max((span["end_ns"] - span["start_ns"]) / 1e6, 0.05)
        ax.barh(y, width, left=left, color=COLOURS[kind(span)], height=0.7)
        text = f"{'  ' * depth}{label(span)}  {width:.1f} ms"
        ax.text(left + width + 0.3, y, text, va="center", fontsize=7.5)
    ax.set_yticks([])
    ax.invert_yaxis()
    end = max((s["end_ns"] - start) / 1e6 for s in spans)
    ax.set_xlim(0, end * 1.6)
    ax.set_xlabel("milliseconds since the request arrived")
    services = sorted({str(span["service"]) for span in spans})
    title = f"One registration's trace, as the collector received it ({', '.join(services)})"
    ax.set_title(title, fontsize=10)
    handles = [Patch(color=colour, label=name) for name, colour in COLOURS.items()]
    ax.legend(handles=handles, loc="lower right", fontsize=8, frameon=False)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
