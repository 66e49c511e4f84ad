"""Running the workbook.

    record.py     a chapter's results JSON (``record``, ``metric``, quick mode from the environment)
    reproduce.py  the batch runner: execute notebooks once, write the results tables, check targets
    viz.py        plots, a static animation, and ``show_source``
"""
