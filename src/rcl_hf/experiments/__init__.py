"""The paper's comparison at matched accuracy (issue 9): an experiment grid over datasets × backbones ×
methods × operating points × seeds, post-hoc decision rules, operating-point selection on validation
only, statistics (seed × test-image bootstrap CIs, exact McNemar, Clopper–Pearson), results and plots.

Modules: :mod:`.grid` (YAML -> cells, resumable runner), :mod:`.rules` (argmax / Bayes / blend rules,
ECE, risk–coverage), :mod:`.selection`, :mod:`.stats`, :mod:`.report` (results.csv / results.md),
:mod:`.plots`, :mod:`.losses` (severity margin and logit mixup options), :mod:`.cli`.
"""

from .grid import Cell, Grid, is_done, load_grid, run_cell, run_grid
from .variants import ExperimentRiskArguments, LogitMixupLoss, SeverityMarginLoss
from .rules import DEFAULT_BLEND_WEIGHTS, blend_decision, expected_calibration_error, risk_coverage
from .selection import select_operating_points
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
    "DEFAULT_BLEND_WEIGHTS",
    "blend_decision",
    "expected_calibration_error",
    "risk_coverage",
    "select_operating_points",
    "clopper_pearson",
    "exact_mcnemar",
    "combined_mcnemar",
    "summarize",
]
