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
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator  # noqa: E402

from gradbench.run.files import atomic_write  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": blue, vermillion, bluish green, reddish purple,
# orange, sky blue, black (black last: it reads as an axis). Their yellow (#f0e442) is left out:
# its contrast on white is 1.3:1, a line a reader cannot follow (the others are 2.2:1 or more).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
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

    @property
    def fixed(self) -> bool:
        """A width a page dictates (--width, or the paper style's column): the saved figure is
        exactly that wide, everything laid out inside it (no tight bounding box to shrink it)."""
        return self.paper or self.width is not None

    def size(self, screen: tuple[float, float], panels: int = 2) -> tuple[float, float]:
        """Figure size: `screen` in the default style without --width; else the width, and a
        height that keeps each of the side-by-side panels about 5:4 (plus room for the axis
        labels), one panel alone at the golden ratio."""
        if self.width is None and not self.paper:
            return screen
        width = WIDTHS[self.width or "column"]
        return width, min(width * 0.62 if panels == 1 else width / panels * 0.8 + 0.6, 4.5)

    def rc(self):
        """The rc settings to draw under (a context manager): a screen figure given a page's
        width takes the paper's sizes in its own font (10 pt text does not fit 3.25 in)."""
        rc = {"axes.prop_cycle": matplotlib.cycler(color=PALETTE)}
        sizes = {k: v for k, v in PAPER_RC.items() if not k.startswith(("font.family", "font.serif", "mathtext"))}
        return plt.rc_context({**rc, **(PAPER_RC if self.paper else sizes if self.fixed else {})})

    def chars(self) -> int:
        """Characters in a title line: about 17 per inch of a fixed width at 8 pt, 110 on screen."""
        return int(WIDTHS[self.width or "column"] * 17) if self.fixed else 110

    @property
    def dpi(self) -> int:
        return 300 if self.paper else 110

    def save(self, fig: plt.Figure, stem: Path) -> list[Path]:
        """stem.<format> for each format, then close the figure. A fixed width is saved at the
        figure's own size (its layout engine, constrained, keeps everything inside), so a column
        figure is 3.25 in wide to the pixel; a screen figure with a tight bounding box."""
        written = []
        tight = {} if self.fixed else {"bbox_inches": "tight", "pad_inches": 0.1}
        for fmt in self.formats:
            path = Path(f"{stem}.{fmt}")
            # a temporary file renamed over the name: a symlink planted there is replaced, never written through
            atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=self.dpi, **tight), binary=True)
            written.append(path)
        plt.close(fig)
        return written


def legend(fig: plt.Figure, ax, look: Look, handles: list | None = None, long: bool = False) -> None:
    """The legend: beside the last axes on a screen figure; in a fixed-width one (a paper's
    column or page), below the panels, whose narrow axes it would cover, in as many columns as
    fit the width, and the figure grows by the legend's height (the panels keep theirs), so
    the legend never squeezes them: 8 methods in a column figure take under a third of it.
    Draw under a constrained layout (the figure's `layout="constrained"`)."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if not look.fixed:
        where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1), "frameon": False} if long else {"loc": "best"}
        ax.legend(handles=handles, fontsize="small", **where)
        return
    if not handles:
        return
    compact = {"handlelength": 1.6, "columnspacing": 1.0, "handletextpad": 0.4, "labelspacing": 0.3,
               "borderaxespad": 0.2, "frameon": False}
    screen = fig.dpi
    fig.set_dpi(look.dpi)  # measured at the saved resolution: text is ~5 % wider at 300 dpi than at 100
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):  # the most columns whose row fits the width
        box = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, **compact)
        extent = box.get_window_extent(renderer)
        width, height = extent.width / fig.dpi, extent.height / fig.dpi
        if width <= fig.get_figwidth() * 0.97 or ncol == 1:
            break
        box.remove()
    fig.set_dpi(screen)
    fig.set_figheight(fig.get_figheight() + height)  # the panels keep their height


def look_of(args: argparse.Namespace) -> Look:
    return Look(getattr(args, "style", "default"), getattr(args, "width", None), tuple(getattr(args, "formats", ["png"])))


# Mantissas of plain tick values on a short log axis, coarsest first: the first ladder that
# puts at least MIN_TICKS ticks on the range, one near each end, labels it.
LADDERS = ((1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8),
           (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
MIN_TICKS = 4
END_GAP = 0.25  # the farthest an end may be from its nearest tick, as a fraction of the decades shown


def log_ticks(low: float, high: float) -> list[float] | None:
    """Plain tick values for a log axis over [low, high] (under one decade): the coarsest ladder
    giving MIN_TICKS or more, with a tick within END_GAP of each end (0.72–2.3: 0.8, 1, 1.5, 2);
    None where even the finest has too few (a range of a few per cent: linear steps then)."""
    span = math.log10(high / low)
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    for ladder in LADDERS:
        ticks = sorted(v for v in {round(m * 10.0 ** e, 12) for e in decades for m in ladder} if low <= v <= high)
        if len(ticks) >= MIN_TICKS and math.log10(ticks[0] / low) <= END_GAP * span \
                and math.log10(high / ticks[-1]) <= END_GAP * span:
            return ticks
    return None


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Plain numbers on a log axis that spans under two decades, where matplotlib would label
    minor ticks as 2.3×10⁰ or 6×10⁻¹ or label only 1 / 1.5 / 2 over 0.72–2.3: under one decade,
    the plain values of log_ticks (0.8, 1, 1.5, 2), or nice linear steps on a range of a few
    per cent (2.28, 2.3, ...); one to two decades, 1, 2, 5 in each (0.2, 0.5, 1, 2); call once
    the limits are final."""
    scale = ax.get_yscale() if axis == "y" else ax.get_xscale()
    low, high = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    if scale != "log" or low <= 0 or high / low >= 100:
        return
    target = ax.yaxis if axis == "y" else ax.xaxis
    plain = FuncFormatter(lambda v, _: f"{v:.4g}")
    if high / low < 10:
        ticks = log_ticks(low, high)
        target.set_major_locator(FixedLocator(ticks) if ticks else
                                 MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10], min_n_ticks=MIN_TICKS))
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
