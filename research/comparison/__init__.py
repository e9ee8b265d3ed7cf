"""Compare trained pipelines (a loss plus a decision rule) symmetrically: every family's operating point is
chosen on validation by the same selection, then scored once on test with paired, seed × image bootstrap
CIs; verdicts are generated from those checks.

Modules: :mod:`.runs` (a run's saved logits), :mod:`.pipelines` (operating points, selection, the
comparison), :mod:`.stats` (bootstrap, McNemar, Clopper–Pearson), :mod:`.verdict` (the CI → verdict rule and
its sentences), :mod:`.figures` (CER–accuracy fronts and other plots of a comparison).
"""

from .pipelines import Comparison, compare_pipelines, operating_points
from .runs import POINT_METRICS, SPLITS, Run, family_name, load_run_folder
from .stats import PipelineSample, bootstrap_replicates, clopper_pearson, combined_mcnemar, exact_mcnemar, summarize
from .verdict import comparison_sentence, difference_verdict, headline_verdict

__all__ = [
    "Comparison",
    "compare_pipelines",
    "operating_points",
    "Run",
    "family_name",
    "load_run_folder",
    "POINT_METRICS",
    "SPLITS",
    "PipelineSample",
    "bootstrap_replicates",
    "clopper_pearson",
    "combined_mcnemar",
    "exact_mcnemar",
    "summarize",
    "difference_verdict",
    "comparison_sentence",
    "headline_verdict",
]
