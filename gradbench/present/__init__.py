"""Presentation: figures, tables and names, drawn from run-dir files alone (so any run can be
re-plotted and re-aggregated later).

    names.py         display names of every option, override and split
    figstyle.py      palette, screen and paper styles, widths, tick rules, file formats
    options.py       the figure options (--style, --width, --format), standard library only
    plots.py         one run's figures from its files (`python -m gradbench.present.plots RUN_DIR`)
    report_runs.py   a sweep's run dirs as rows: find, read, group, aggregate
    report_cells.py  a report's cells: mean ± CI, ties, the best group
    report_plots.py  a report's overlay and confusion figures
    paired.py        a report's groups against a baseline group, seed by seed (--baseline)
    search_table.py  `gradbench search`'s tables: every trial, each method's choice

It reads run dirs through the run machinery (gradbench.run) and is used by the commands.
"""
