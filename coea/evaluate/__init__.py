"""Offline evaluation v3 (``coea evaluate``): the paper's Table 2 with App. A.4 metrics and test-based ones
(docs/evaluation.md).

    split     coea/evaluate/split.py   per-user (default) or global split, phases, training view, leak check
    methods   coea/evaluate/methods.py every method's ranking at a phase, tuning on validation, CoEA's operating points
    run       coea/evaluate/run.py     run_evaluate: item data, the seeds, the files
    report    coea/evaluate/report.py  metrics, frontiers, hierarchical bootstrap intervals, targets (results.json)
    markdown  coea/evaluate/markdown.py  results.md and frontier.png from them
"""

from coea.evaluate.markdown import results_markdown, table_markdown
from coea.evaluate.report import LABELS, improvement, recompute_from_files
from coea.evaluate.methods import variant_workdir
from coea.evaluate.run import run_evaluate
from coea.evaluate.split import LeakError, assert_unseen, make_split, workdir_config, write_train_view

__all__ = [
    "LABELS", "LeakError", "assert_unseen", "improvement", "make_split", "recompute_from_files", "results_markdown",
    "run_evaluate", "table_markdown", "variant_workdir", "workdir_config", "write_train_view",
]
