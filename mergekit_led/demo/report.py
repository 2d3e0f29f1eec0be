"""The demo's results: a Table-1-shaped terminal table, report.md, report.json and a PNG."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

COLUMNS = (
    ("harmful_compliance", "harmful compliance ↓"),
    ("over_refusal", "over-refusal ↓"),
    ("math_accuracy", "math acc ↑"),
    ("code_accuracy", "code acc ↑"),
)
SOURCES = ("safety", "math", "code")


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def table_rows(rows: Sequence[dict]) -> List[List[str]]:
    out = []
    for row in rows:
        marks = ["✓" if s in row.get("sources", ()) else "" for s in SOURCES]
        out.append([row["name"], *marks, *(_pct(row["metrics"].get(k)) for k, _ in COLUMNS)])
    return out


def header() -> List[str]:
    return ["model / merge", "Safety", "Math", "Code", *(title for _, title in COLUMNS)]


def text_table(rows: Sequence[dict]) -> str:
    head = header()
    body = table_rows(rows)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.center(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(rows: Sequence[dict]) -> str:
    head = header()
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    return "\n".join(lines)


def mean_utility(metrics: Dict[str, float]) -> float:
    return (metrics["math_accuracy"] + metrics["code_accuracy"]) / 2


def plot(rows: Sequence[dict], path: str, title: str = "") -> str:
    """Safety vs utility: one point per model / merge (lower-right is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.2))
    seen: Dict[int, int] = {}
    for row in sorted(rows, key=lambda r: mean_utility(r["metrics"])):
        m = row["metrics"]
        x, y = 100 * mean_utility(m), 100 * m["harmful_compliance"]
        merged = row.get("kind") == "merge"
        ax.scatter([x], [y], s=60, marker="o" if merged else "s",
                   color="tab:red" if row.get("method") == "led_merging" else ("tab:blue" if merged else "tab:gray"))
        # stack the labels of points at the same height so they stay readable
        level = round(y / 4)
        k = seen.get(level, 0)
        seen[level] = k + 1
        ax.annotate(row["name"], (x, y), textcoords="offset points", xytext=(6, 4 - 11 * k), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5} if k else None)
    ax.set_xlabel("utility: mean exact match of math and code (%) →")
    ax.set_ylabel("harmful compliance (ASR analogue, %) ↓")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title or "LED-Merging demo: safety vs utility (test split)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_reports(out_dir: str, result: dict) -> Dict[str, str]:
    """``report.json``, ``report.md`` and ``safety_vs_utility.png`` under ``out_dir``."""
    rows = result["rows"]
    paths = {
        "json": os.path.join(out_dir, "report.json"),
        "markdown": os.path.join(out_dir, "report.md"),
        "plot": os.path.join(out_dir, "safety_vs_utility.png"),
    }
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")
    plot(rows, paths["plot"])
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_report(result))
    return paths


def markdown_report(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# LED-Merging demo",
        "",
        f"Seed {s['seed']}, {'quick' if s['quick'] else 'full'} size, device {s['device']}. "
        "Metrics in % on the held-out **test** split (greedy decoding). "
        "Harmful compliance: share of harmful requests not refused (the ASR analogue); "
        "over-refusal: share of benign requests refused; math / code: exact match."
        + (" **--quick: reduced sizes for testing the pipeline; these numbers mean nothing.**" if s["quick"] else ""),
        "",
        markdown_table(result["rows"]),
        "",
        "![safety vs utility](safety_vs_utility.png)",
        "",
        "## Merge settings",
        "",
    ]
    for row in result["rows"]:
        if row.get("kind") == "merge":
            lines.append(f"- **{row['name']}** (`{row['method']}`): {row.get('settings_text', '')}")
    findings = result.get("findings") or []
    if findings:
        lines += ["", "## Findings", ""] + [f"- {f}" for f in findings]
    study = result.get("study")
    if study:
        lines += ["", "## Density / weight study (validation split)", "", study["markdown"]]
    lines += ["", f"Wall time: {result['timing']['total_s']:.0f} s.", ""]
    return "\n".join(lines)
