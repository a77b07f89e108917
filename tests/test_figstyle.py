"""How every figure looks (gradbench.present.figstyle): a palette readable on white and with
any colour vision, a fixed width that is the page's width to the pixel, a legend that leaves
the panels their room, and enough plain ticks on a short log axis."""

import math
import re

import matplotlib.colors as mcolors
import matplotlib.image as mimage
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from gradbench.present.figstyle import PALETTE, WIDTHS, Look, plain_log_ticks
from gradbench.present.report_plots import draw_overlays

# Okabe & Ito (2008): the colour-blind-safe set the palette is drawn from
OKABE_ITO = {"#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#000000"}
# The README's forward-gradient family as `report` labels it: 8 groups in a column figure
FAMILY = ["backprop", "FG-W dense", "FG-W rank-1", "FG-A", "mean K = 8 (rank-1)", "projection K = 8 (rank-1)",
          "L-BP", "LG-FG-A"]
LONG = ["backprop", "FG-W dense", "FG-W rank-1", "FG-A", "mean K = 8 (rank-1)", "projection K = 8 (rank-1)",
        "backprop, local losses", "FG-A, local losses"]  # 5 per row: 6.57 in measured at 100 dpi, 6.91 in drawn at 300


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def contrast_on_white(colour: str) -> float:
    """WCAG 2 contrast ratio of a colour against white (1 to 21)."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in mcolors.to_rgb(colour)]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return 1.05 / (luminance + 0.05)


def test_the_palette_is_colour_blind_safe_and_every_colour_reads_on_white():
    """Okabe–Ito colours only, each once; none as faint as their yellow (#f0e442: 1.3:1 on
    white, the line a user could not follow); the faintest kept, sky blue and orange, are 2.2:1."""
    hexes = [mcolors.to_hex(c) for c in PALETTE]
    assert set(hexes) <= OKABE_ITO and len(set(hexes)) == len(hexes)
    assert min(contrast_on_white(c) for c in PALETTE) >= 2, {c: round(contrast_on_white(c), 2) for c in PALETTE}


def family_figure(look: Look, labels: list[str] = FAMILY) -> plt.Figure:
    steps = np.arange(0, 2001, 100)
    groups = {name: [(pd.DataFrame({"step": steps, "train_time_s": steps * 0.02,
                                                   "val_accuracy": 1 - 0.9 * np.exp(-steps / (300 * (i + 1)))}),
                                     "max_steps")] * 3 for i, name in enumerate(labels)}
    return draw_overlays(groups, look)["val_accuracy"]


@pytest.mark.parametrize("width, labels", [("column", FAMILY), ("page", FAMILY), ("page", LONG)])
def test_a_fixed_width_figure_is_the_pages_width_exactly(tmp_path, width, labels):
    """--width column is 3.25 in: the PNG 3.25 × 300 dpi = 975 px wide (a tight bounding box
    had cut it to 3.05 in), the PDF page 3.25 × 72 = 234 pt; the legend is inside the figure."""
    look = Look("paper", width, ("png", "pdf"))
    with look.rc():
        fig = family_figure(look, labels)
        fig.set_dpi(look.dpi)  # where the file is drawn: text widths differ with the resolution
        fig.canvas.draw()
        legend = fig.legends[0].get_window_extent()
        assert legend.x0 >= 0 and legend.x1 <= fig.bbox.width + 0.5 and legend.y0 >= -0.5
        png, pdf = look.save(fig, tmp_path / "val_accuracy")
    assert mimage.imread(png).shape[1] == round(WIDTHS[width] * 300)
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)", pdf.read_bytes())
    assert float(box.group(1)) == pytest.approx(WIDTHS[width] * 72, abs=0.01)


@pytest.mark.parametrize("width", ["column", "page"])
def test_the_legend_leaves_the_panels_their_room(width):
    """Eight methods below a column's two panels: in as many columns as fit, under a third of
    the figure's height (it took 40 % in one column above the panels), and the panels keep the
    height Look.size gives them."""
    look = Look("paper", width)
    with look.rc():
        fig = family_figure(look)
        fig.canvas.draw()
    share = fig.legends[0].get_window_extent().height / fig.bbox.height
    assert share < 1 / 3, share
    assert fig.legends[0]._ncols >= 2
    panels = fig.axes[0].get_position().height * fig.get_figheight()
    assert panels >= 0.5 * look.size((0, 0))[1], panels  # at least half the panel height without the legend


@pytest.mark.parametrize("low, high", [(0.72, 2.3), (0.3, 0.9), (1.05, 9.9), (12, 95), (1.9, 2.6), (2.28, 2.38)])
def test_a_short_log_axis_gets_enough_plain_ticks_near_both_ends(low, high):
    """0.72–2.3 was labelled 1 / 1.5 / 2 only: now 0.8, 1, 1.5, 2; every range under a decade
    gets 4 or more plain labels, the outermost within a quarter of the range (in decades) of
    its end."""
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    plain_log_ticks(ax)
    fig.canvas.draw()
    shown = [(t.get_text(), t.get_position()[1]) for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
    values = [y for _, y in shown]
    assert len(shown) >= 4, shown
    assert all(float(text) == pytest.approx(y, rel=1e-6) for text, y in shown)  # "0.8", not 8×10⁻¹
    span = math.log10(high / low)
    assert math.log10(min(values) / low) <= 0.25 * span and math.log10(high / max(values)) <= 0.25 * span
    assert not any(t.get_text() for t in ax.get_yticklabels(minor=True))
    if (low, high) == (0.72, 2.3):
        assert values == pytest.approx([0.8, 1, 1.5, 2])
