"""Running the workbook.

    inputs.py     what a chapter's run depends on, as one key (``reproduce --stale``)
    lab.py        JupyterLab for the workbook (``make lab``): chapters open as notebooks, quick mode
    record.py     a chapter's results JSON (``record``, ``metric``, quick mode and where results go)
    reproduce.py  the batch runner: execute notebooks once, record only when asked, check targets
    schedule.py   longest chapters first, and the live line: what is running, the time left
    targets.py    a chapter's targets and their verdicts (a direction is met only beyond its spread)
    tables.py     the results tables generated from results JSON: RESULTS.md, the README's tables
    viz.py        plots, a static animation, and ``show_source``
    workers.py    the batch runner's workers end when it is killed (``exit_with_parent``)
"""
