"""Critical Error Rate (CER): an `evaluate` metric for risk-calibrated medical classification.

A thin `evaluate.Metric` over ``clinical_scores.py`` beside this file (numpy only), the same
core rcl_hf.metrics.functional computes with; this folder needs no rcl_hf (see README.md).
"""

import datasets
import evaluate
import numpy as np
from .clinical_scores import PRESET_GROUPS
from .clinical_scores import check_severity
from .clinical_scores import clinical_scores
from .clinical_scores import preset_severity

_CITATION = """\
@misc{risk_calibrated_learning,
  title  = {Risk-Calibrated Learning: Minimizing Fatal Errors in Medical AI},
  year   = {2026},
  eprint = {2604.12693},
  archivePrefix = {arXiv}
}
"""

_DESCRIPTION = """\
Critical Error Rate (CER) is the share of cases whose prediction is a clinically
critical error, as marked by a critical mask C: CER = (1/N) sum_n C[y_n, yhat_n].
The metric also returns accuracy, balanced accuracy, macro-F1, the critical miss
rate (critical errors over cases whose class can be critically missed) and the
expected clinical cost under a severity matrix M. Rates are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `int` or `str`): predicted classes, as indices or as class names.
    references (`list` of `int` or `str`): true classes, as indices or as class names.
    severity (`str` or `dict`, optional): a preset name (brain_tumor_mri, isic2018, breakhis,
        sicapv2, synthetic) or {"labels", "matrix", "critical"} (rcl_hf's SeverityMatrix.to_dict()).
    severity_matrix (`list` of `list` of `float`, K x K): cost M[i][j] of predicting j for truth i,
        instead of `severity`.
    critical_mask (`list` of `list` of `bool`, K x K, optional): critical cells; default: cells of cost 1.0.
    labels (`list` of `str`, optional): class names (default: the severity's labels); needed for
        class-name inputs with `severity_matrix`.
    per_class (`bool`): add `per_class_recall`.
    return_confusion (`bool`): add `confusion_matrix` and `labels`.
    n_bootstrap (`int`): bootstrap resamples for `*_ci` intervals (0: none).
    seed (`int`): bootstrap seed.
Returns:
    accuracy, balanced_accuracy, macro_f1, cer, critical_miss_rate, expected_cost,
    n_critical, n_positive, n_samples (and the optional keys above).
Examples:
    >>> metric = evaluate.load("critical_error_rate")  # the folder of this file
    >>> metric.compute(predictions=["notumor", "glioma"], references=["glioma", "glioma"],
    ...                severity="brain_tumor_mri")["cer"]
    0.5
"""

_NUMBER, _NAME = datasets.Value("float64"), datasets.Value("string")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CriticalErrorRate(evaluate.Metric):
    """CER and its companions for K-class medical image classification."""

    def _info(self):
        # Numbers are read as float64 so that 0.5 reaches _compute and is refused (an int64
        # feature would truncate it to 0); class names as strings.
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[datasets.Features({"predictions": p, "references": r})
                      for p, r in ((_NUMBER, _NUMBER), (_NAME, _NAME), (_NAME, _NUMBER), (_NUMBER, _NAME))],
            reference_urls=["https://arxiv.org/abs/2604.12693"],
        )

    def _compute(self, predictions, references, severity=None, severity_matrix=None, critical_mask=None,
                 labels=None, per_class=False, return_confusion=False, n_bootstrap=0, seed=0):
        if severity is None and severity_matrix is None:
            raise ValueError("Pass severity (a preset name or a dict with labels, matrix, critical) or severity_matrix")
        sev_labels = None
        if isinstance(severity, str):
            matrix, critical, sev_labels = preset_severity(severity)
        elif isinstance(severity, dict):
            if "matrix" not in severity:
                raise ValueError("A severity dict needs 'matrix' (and 'labels', 'critical'), like SeverityMatrix.to_dict()")
            matrix, critical = check_severity(severity["matrix"], severity.get("critical"))
            sev_labels = list(severity["labels"]) if severity.get("labels") is not None else None
        elif severity is not None:
            raise ValueError(f"severity must be a preset name {sorted(PRESET_GROUPS)} or a dict, got {type(severity).__name__}")
        else:
            matrix, critical = check_severity(severity_matrix, critical_mask)
        names = list(labels) if labels is not None else sev_labels
        return clinical_scores(
            _column(predictions), _column(references), matrix, critical, names, accept_names=True,
            return_confusion=return_confusion, per_class=per_class, n_bootstrap=n_bootstrap, seed=seed,
        )


def _column(values):
    """Class names as a string array, numbers as float64 (integers are checked by the core)."""
    values = list(values)
    if any(isinstance(v, str) for v in values):
        if not all(isinstance(v, str) for v in values):
            raise ValueError("Mix of class names and numbers in one column: use one or the other")
        return np.asarray(values, dtype=str)
    return np.asarray(values, dtype=np.float64)
