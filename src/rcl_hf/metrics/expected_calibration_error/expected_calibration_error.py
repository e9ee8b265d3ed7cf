"""Expected calibration error (ECE): an `evaluate` metric over predicted class probabilities.

A thin `evaluate.Metric` over rcl_hf's one definition,
:func:`rcl_hf.metrics.reliability.expected_calibration_error` (top-label ECE, equal-width bins);
inputs are checked by :func:`rcl_hf.metrics.reliability.check_probabilities`. Needs rcl_hf installed.
"""

import datasets
import evaluate
from rcl_hf.metrics.reliability import check_probabilities
from rcl_hf.metrics.reliability import expected_calibration_error

_CITATION = """\
@inproceedings{guo2017calibration,
  title     = {On Calibration of Modern Neural Networks},
  author    = {Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle = {ICML},
  year      = {2017}
}
"""

_DESCRIPTION = """\
Top-label expected calibration error: the N cases are put in n_bins equal-width bins
(i/n_bins, (i+1)/n_bins] by their top-class probability (confidence), and
ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|, where acc is the share of cases in the bin
whose top class is the true class and conf their mean confidence. 0 is perfect calibration;
the value is a fraction in [0, 1].
"""

_KWARGS_DESCRIPTION = """\
Args:
    prediction_scores (`list` of `list` of `float`, N x K): predicted class probabilities, each row
        summing to 1 (probabilities, not logits).
    references (`list` of `int`): true class indices in [0, K).
    n_bins (`int`, default 15): number of equal-width confidence bins.
Returns:
    ece (`float`): the expected calibration error, in [0, 1].
    n_samples (`int`): the number of cases.
Examples:
    >>> metric = evaluate.load("expected_calibration_error")  # the folder of this file
    >>> metric.compute(prediction_scores=[[0.9, 0.1], [0.9, 0.1]], references=[0, 1], n_bins=2)["ece"]
    0.4
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExpectedCalibrationError(evaluate.Metric):
    """Top-label ECE of K-class predicted probabilities."""

    def _info(self):
        # references are read as float64 so that 0.5 reaches _compute and is refused, not truncated to 0
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"prediction_scores": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Value("float64")}),
            reference_urls=["https://arxiv.org/abs/1706.04599"],
        )

    def _compute(self, prediction_scores, references, n_bins=15):
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
        probs, labels = check_probabilities([list(row) for row in prediction_scores], references)
        return {"ece": expected_calibration_error(probs, labels, n_bins), "n_samples": int(len(labels))}
