"""The study: does training with the risk-calibrated loss beat the best post-hoc decision rule, and does
the certified decision layer keep its promise on real data? It imports the library (:mod:`rcl_hf`) and is not
installed with it; run it from the repository root (``python -m research.run_grid GRID.yaml``).

Modules, by what they hold: :mod:`.grid` (YAML -> cells over split seeds × seeds, resumable runner),
:mod:`.run_grid` (the command: run a grid, then the matched-accuracy comparison of :mod:`.comparison`),
:mod:`.comparison` (trained pipelines, a loss plus a decision rule, chosen on validation the same way and scored
once on test: seed × image bootstrap, McNemar, generated verdicts, CER–accuracy fronts), :mod:`.main_job` (the
main job of ``make main`` = ``python scripts/main_job.py``), :mod:`.executors` (cells as Slurm / submitit jobs),
:mod:`.embed_pool` (frozen embeddings shared across split seeds), :mod:`.report` (``results.csv`` / ``results.md``),
:mod:`.risk_variants` (the study's loss options: severity margin, logit mixup, cross-fitted weights),
:mod:`.crossfit`, :mod:`.post_hoc_families` (every family selected the same way, post-hoc logit adjustment
and CRM), :mod:`.clustered` (split × seed × image bootstrap, Clopper–Pearson over images), :mod:`.ranking`
(AUROC / AUPRC of the critical-class score), :mod:`.symmetric_comparison` (rule against rule, equal-accuracy
check, generated verdicts) and :mod:`.symmetric_comparison_report`, :mod:`.abstention` /
:mod:`.abstention_report` (trained abstention against the referral rule), :mod:`.risk_control_report`
(certified risk control on real data, per group and per image), :mod:`.risk_control_runs` (a run's group ids
recovered from its rebuilt split), :mod:`.risk_control_tables` (what that report writes) and
:mod:`.group_certificate_check`. Results: ``research/results/`` (index in its README).
"""

from rcl_hf.metrics.reliability import expected_calibration_error, risk_coverage

from .comparison.stats import clopper_pearson, combined_mcnemar, exact_mcnemar, summarize
from .grid import Cell, Grid, is_done, load_grid, run_cell, run_grid
from .risk_variants import ExperimentRiskArguments, LogitMixupLoss, SeverityMarginLoss

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
