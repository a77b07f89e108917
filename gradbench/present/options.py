"""The figure options every drawing command takes (--style, --width, --format) and the facts
they name, standard library only: `gradbench report --help` prints them without importing
matplotlib (gradbench.present.figstyle draws with them).
"""

from __future__ import annotations

import argparse

WIDTHS = {"column": 3.25, "page": 6.75}  # inches: one column, the whole page of a two-column paper
FORMATS = ("png", "pdf", "svg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--style, --width, --format: the same three options on every command that draws."""
    parser.add_argument("--style", choices=("default", "paper"), default="default",
                        help="paper: serif 8 pt (STIX), no titles, one- or two-column widths, 300 dpi")
    parser.add_argument("--width", choices=tuple(WIDTHS), help=f"figure width: column {WIDTHS['column']} in, "
                        f"page {WIDTHS['page']} in (default: column for --style paper, the screen size otherwise)")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["png"], dest="formats",
                        help="file format(s) of the figures (default png)")
