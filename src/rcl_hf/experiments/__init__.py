"""The paper's comparison at matched accuracy (issue 9): an experiment grid over datasets × backbones ×
methods × operating points × seeds, post-hoc decision rules, operating-point selection on validation
only, statistics (seed × test-image bootstrap CIs, exact McNemar, Clopper–Pearson), results and plots.

Modules: :mod:`.grid` (YAML -> cells over split seeds × seeds, resumable runner), :mod:`.embed_pool`
(frozen embeddings shared across split seeds), :mod:`.rules` (ECE, risk–coverage; the decision rules and
the selection are the library's :mod:`rcl_hf.decision` and :mod:`rcl_hf.selection`), :mod:`.stats`, :mod:`.report` (results.csv / results.md),
:mod:`.figures`, :mod:`.variants` (severity margin, logit mixup and the issue-13 loss options),
:mod:`.crossfit`, :mod:`.command`, :mod:`.executors` (cells as Slurm / submitit jobs); round 2 (issue 13): :mod:`.symmetric` (every family selected the same
way, post-hoc logit adjustment and CRM), :mod:`.clustered` (split × seed × image bootstrap, Clopper–Pearson
over images), :mod:`.ranking` (AUROC / AUPRC of the critical-class score), :mod:`.round2` (comparisons,
equal-accuracy check, generated verdicts), :mod:`.round2_report` (README, tables, plots).
"""

from .grid import Cell, Grid, is_done, load_grid, run_cell, run_grid
from .variants import ExperimentRiskArguments, LogitMixupLoss, SeverityMarginLoss
from .rules import expected_calibration_error, risk_coverage
from .stats import clopper_pearson, combined_mcnemar, exact_mcnemar, summarize

__all__ = [
    "Cell",
    "Grid",
    "load_grid",
    "run_grid",
    "run_cell",
    "is_done",
    "ExperimentRiskArguments",
    "SeverityMarginLoss",
    "LogitMixupLoss",
    "expected_calibration_error",
    "risk_coverage",
    "clopper_pearson",
    "exact_mcnemar",
    "combined_mcnemar",
    "summarize",
]
