"""One table from the benchmarks' figures: what `make bench` prints at the end.

Each benchmark run with `--summary DIR` writes its headline figures to DIR/<benchmark>.json
(`write`); `python experiments/benchmarks/summary.py DIR` prints them as one markdown table,
with the machine they ran on. Figures are copied, never recomputed here.
"""
from __future__ import annotations

import json
import os
import platform
import sys


def write(directory: str | None, benchmark: str, rows: dict[str, dict]) -> None:
    """rows: {row name: {column: value}}; written atomically as DIR/benchmark.json."""
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{benchmark}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(path + ".tmp", path)


COLUMNS = (  # (key, header, format)
    ("ours", "t5x_lite", "{:,.0f}"),
    ("ours_int8", "t5x_lite int8", "{:,.0f}"),
    ("theirs", "transformers", "{:,.0f}"),
    ("consumption", "model consumes", "{:,.1f}"),
    ("ratio", "ratio", "{:.2f}x"),  # t5x_lite / transformers, or pipeline / model
    ("ratio_int8", "ratio int8", "{:.2f}x"),
    ("mfu", "MFU (theirs)", "{}"),
    ("memory", "peak memory (theirs)", "{}"),
    ("agreement", "int8 agreement", "{}"),
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(directory: str) -> str:
    rows = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                rows.update(json.load(f))
    lines = [f"{cpu_model()}, {os.cpu_count()} cores",
             "| benchmark | unit | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row, figures in rows.items():
        cells = [fmt.format(figures[key]) if figures.get(key) is not None else ""
                 for key, _, fmt in COLUMNS]
        lines.append(f"| {row} | {figures.get('unit', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "runs/bench"))
