"""How every gradbench figure looks: the colour-blind-safe palette, the screen and paper styles,
figure widths, the tick rules, and saving in the requested formats.

    gradbench report DIR --style paper --width column --format pdf    # 3.25 in wide, serif 8 pt

Paper style: the widths of a two-column paper (ICML, NeurIPS, IEEE are within 0.1 in of these),
STIX fonts (a Times body, as those templates use; mathtext 'stix', so no LaTeX install is
needed), 8 pt text, 300 dpi for bitmaps, TrueType in PDFs (text stays text), and no title
(a caption says it). Both styles use Okabe and Ito's palette, readable with any colour vision.
"""

from __future__ import annotations

import argparse
import contextlib
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator  # noqa: E402

from gradbench.run.files import atomic_write  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": blue, vermillion, bluish green, reddish purple,
# orange, sky blue, yellow, black; yellow and black last (yellow is faint on white, black reads
# as an axis).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000")
# One colour per split in every run plot; the batch loss grey, drawn faint behind the evaluations.
SPLIT_COLOURS = {"batch": "#9e9e9e", "train": PALETTE[0], "val": PALETTE[4], "test": PALETTE[2]}
# the figure options and their facts: in a module of their own, so help imports no matplotlib
from gradbench.present.options import FORMATS, WIDTHS, add_arguments  # noqa: E402,F401  (re-exported)
DOTTED = ":"  # reserved for diverged and failed runs, in every figure

PAPER_RC = {
    "font.family": "serif", "font.serif": ["STIXGeneral", "DejaVu Serif"], "mathtext.fontset": "stix",
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.0, "lines.markersize": 3.5, "axes.linewidth": 0.6,
    "grid.linewidth": 0.4, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
    "legend.frameon": False, "pdf.fonttype": 42, "svg.fonttype": "none",
}


@dataclass(frozen=True)
class Look:
    """The style (default | paper), the width (column | page | None: the style's own) and the
    file formats of a command's figures."""

    style: str = "default"
    width: str | None = None
    formats: tuple[str, ...] = ("png",)

    @property
    def paper(self) -> bool:
        return self.style == "paper"

    @property
    def titles(self) -> bool:
        return not self.paper  # a paper figure's title is its caption

    def size(self, screen: tuple[float, float], panels: int = 2) -> tuple[float, float]:
        """Figure size: `screen` in the default style without --width; else the width, and a
        height that keeps each of the side-by-side panels about 5:4 (plus room for the axis
        labels), one panel alone at the golden ratio."""
        if self.width is None and not self.paper:
            return screen
        width = WIDTHS[self.width or "column"]
        return width, min(width * 0.62 if panels == 1 else width / panels * 0.8 + 0.6, 4.5)

    def rc(self):
        """The rc settings to draw under (a context manager)."""
        rc = {"axes.prop_cycle": matplotlib.cycler(color=PALETTE)}
        return plt.rc_context({**rc, **(PAPER_RC if self.paper else {})})

    def save(self, fig: plt.Figure, stem: Path) -> list[Path]:
        """stem.<format> for each format (tight bounding box), then close the figure."""
        written = []
        for fmt in self.formats:
            path = Path(f"{stem}.{fmt}")
            # a temporary file renamed over the name: a symlink planted there is replaced, never written through
            atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=300 if self.paper else 110, bbox_inches="tight",
                                                     pad_inches=0.02 if self.paper else 0.1), binary=True)
            written.append(path)
        plt.close(fig)
        return written


def legend(fig: plt.Figure, ax, look: Look, handles: list | None = None, long: bool = False) -> None:
    """The legend: beside the last axes on screen; above the panels in a paper figure, whose
    narrow panels it would cover (one column of entries for long labels, else several)."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if not look.paper:
        where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1), "frameon": False} if long else {"loc": "best"}
        ax.legend(handles=handles, fontsize="small", **where)
        return
    wide = (look.width or "column") == "page"
    ncol = (2 if wide else 1) if long else (len(handles) if wide else min(len(handles), 2))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(ncol, 1))


def look_of(args: argparse.Namespace) -> Look:
    return Look(getattr(args, "style", "default"), getattr(args, "width", None), tuple(getattr(args, "formats", ["png"])))


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Plain numbers on a log axis that spans under two decades, where matplotlib would label
    minor ticks as 2.3×10⁰ or 6×10⁻¹: under one decade, nice linear steps (2.28, 2.3, ...); one
    to two decades, 1, 2, 5 in each (0.2, 0.5, 1, 2); call once the limits are final."""
    scale = ax.get_yscale() if axis == "y" else ax.get_xscale()
    low, high = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    if scale != "log" or low <= 0 or high / low >= 100:
        return
    target = ax.yaxis if axis == "y" else ax.xaxis
    plain = FuncFormatter(lambda v, _: f"{v:.4g}")
    if high / low < 10:
        target.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
        target.set_minor_locator(NullLocator())
    else:
        target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        target.set_minor_locator(LogLocator(subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(plain)


def integer_steps(ax) -> None:
    """Steps are whole numbers: no tick at 2.5."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # 0, 5, 10, not 0, 3, 6


def wrap(parts: list[str], width: int, sep: str = " · ") -> str:
    """Parts joined by `sep`, lines broken only between parts (a value is never split, so no
    "0" is left alone on a line); a part longer than a line is shortened."""
    lines, line = [], ""
    for part in parts:
        part = textwrap.shorten(part, width, placeholder="…")
        if line and len(line) + len(sep) + len(part) > width:
            lines.append(line)
            line = part
        else:
            line = f"{line}{sep}{part}" if line else part
    return "\n".join(lines + [line] if line else lines)


def mark_diverged(ax, x: float, y: float, step: int, colour: str = "black", note: bool = True) -> None:
    """A ✕ where a run diverged (at the axis' top edge when beyond it) and "diverged at step N"."""
    low, high = ax.get_ylim()
    y = min(max(y, low), high)
    ax.plot([x], [y], "x", color=colour, ms=7, mew=1.5, clip_on=False, zorder=5)
    if note:
        ax.annotate(f"diverged at step {step}", (x, y), xytext=(-4, -4), textcoords="offset points",
                    ha="right", va="top", fontsize="small", color=colour)
