"""Offline evaluation v3 (``coea evaluate``): the paper's Table 2 with App. A.4 metrics and test-based ones
(docs/evaluation.md).

    split     coea/evaluate/split.py   per-user (default) or global split, phases, training view, leak check
    run       coea/evaluate/run.py     run_evaluate: rankings of every method, tuning on validation, files
    report    coea/evaluate/report.py  metrics, frontiers, hierarchical bootstrap intervals, Table 2, the plot
"""

from coea.evaluate.report import LABELS, improvement, recompute_from_files, results_markdown, table_markdown
from coea.evaluate.run import run_evaluate, variant_workdir
from coea.evaluate.split import LeakError, assert_unseen, make_split, workdir_config, write_train_view

__all__ = [
    "LABELS", "LeakError", "assert_unseen", "improvement", "make_split", "recompute_from_files", "results_markdown",
    "run_evaluate", "table_markdown", "variant_workdir", "workdir_config", "write_train_view",
]
