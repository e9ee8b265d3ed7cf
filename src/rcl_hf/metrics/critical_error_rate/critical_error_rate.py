"""Critical Error Rate (CER): an `evaluate` metric for risk-calibrated medical classification.

A thin `evaluate.Metric` over `rcl_hf.metrics.functional.critical_error_rate`,
the single implementation of the formulas (see README.md beside this file).
"""

import datasets
import evaluate
import numpy as np
from rcl_hf.metrics.functional import critical_error_rate

_CITATION = """\
@article{rcl2026,
  title   = {Risk-Calibrated Learning: Minimizing Fatal Errors in Medical AI},
  journal = {arXiv preprint arXiv:2604.12693},
  year    = {2026}
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
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    severity_matrix (`list` of `list` of `float`, K x K): cost M[i][j] of predicting j for truth i.
    critical_mask (`list` of `list` of `bool`, K x K, optional): critical cells; default: cells of cost 1.0.
    severity (`str`, optional): a preset name instead of the two arrays
        (brain_tumor_mri, isic2018, breakhis, sicapv2, synthetic).
    labels (`list` of `str`, optional): class names for per-class outputs.
    per_class (`bool`): add `per_class_recall`.
    return_confusion (`bool`): add `confusion_matrix`.
    n_bootstrap (`int`): bootstrap resamples for `*_ci` intervals (0: none).
    seed (`int`): bootstrap seed.
Returns:
    accuracy, balanced_accuracy, macro_f1, cer, critical_miss_rate, expected_cost,
    n_critical, n_positive, n_samples (and the optional keys above).
Examples:
    >>> metric = evaluate.load(rcl_hf.metrics.METRIC_PATH)
    >>> metric.compute(predictions=[2, 0], references=[0, 0],
    ...                severity_matrix=M, critical_mask=C)["cer"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CriticalErrorRate(evaluate.Metric):
    """CER and its companions for K-class medical image classification."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2604.12693"],
        )

    def _compute(
        self,
        predictions,
        references,
        severity_matrix=None,
        critical_mask=None,
        severity=None,
        labels=None,
        per_class=False,
        return_confusion=False,
        n_bootstrap=0,
        seed=0,
    ):
        if severity is None and severity_matrix is None:
            raise ValueError("Pass severity_matrix (and critical_mask) or a severity preset name")
        sev = severity if severity is not None else np.asarray(severity_matrix, dtype=np.float64)
        mask = None if critical_mask is None else np.asarray(critical_mask, dtype=bool)
        return critical_error_rate(
            np.asarray(predictions),
            np.asarray(references),
            sev,
            mask,
            labels=labels,
            per_class=per_class,
            return_confusion=return_confusion,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
