"""The search's own tables (`gradbench search`): every trial, and one line per method with its
choice, so a reader sees the rate and optimizer were chosen from a grid and not by luck.

    trials.csv / trials.md   every trial: method, optimizer, rate, head layout, on the extension or
                             not, how it stopped, its selection value, whether it was chosen
    search.csv / search.md   per method: chosen optimizer, rate, layout, its value, trials, the
                             edge flag (the grid was extended / the best is still on the edge)
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gradbench.present.report_cells import fmt

TRIAL_COLUMNS = ["method", "optimizer", "lr", "layout", "extension", "stop_reason", "value", "chosen", "path"]
METHOD_COLUMNS = ["method", "optimizer", "lr", "layout", "value", "trials", "diverged", "edge", "skipped"]


def _md(frame: pd.DataFrame, columns: list[str], value_name: str) -> str:
    head = [value_name if c == "value" else c for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            v = row.get(c)
            if isinstance(v, float):
                cells.append("" if not math.isfinite(v) else fmt(v))
            elif isinstance(v, bool):
                cells.append("yes" if v else "")
            else:
                cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def write_trials(rows: list[dict], out: Path, select: str) -> pd.DataFrame:
    """trials.csv and trials.md under out (every trial of every method, in run order)."""
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    frame.to_csv(out / "trials.csv", index=False)
    text = (f"# Every trial of the search (selection: final {select}, one seed)\n\n"
            + _md(frame, [c for c in TRIAL_COLUMNS if c != "path"], select)
            + "\n`extension`: the rate added beyond the grid's edge where the grid's best sat on it; "
              "an empty value: the trial diverged or failed (`stop_reason`).\n")
    (out / "trials.md").write_text(text)
    return frame


def write_methods(rows: list[dict], out: Path, select: str, steps: int) -> str:
    """search.csv and search.md under out (one line per method); returns the markdown."""
    frame = pd.DataFrame(rows, columns=METHOD_COLUMNS)
    frame.to_csv(out / "search.csv", index=False)
    text = (f"# The search: each method's best optimizer and rate ({steps} steps, selection: final {select})\n\n"
            + _md(frame, METHOD_COLUMNS, select)
            + "\n`trials`: runs of the method (the same grid for every method: optimizers × rates, × head "
              "layouts for local losses, plus one rate where the best sat on the edge); `edge`: the grid "
              "was extended beyond the edge its best sat on, and whether the best is still on the edge; "
              "`skipped`: why a listed method did not run. Every trial: trials.md.\n")
    (out / "search.md").write_text(text)
    return text
