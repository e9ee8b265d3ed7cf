"""``compute_metrics`` for ``transformers.Trainer``: CER and companions each evaluation."""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np

from ..severity import SeverityMatrix
from .functional import bayes_risk_decision, critical_error_rate, softmax

_SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "cer", "critical_miss_rate", "expected_cost", "n_critical")


def make_compute_metrics(severity: SeverityMatrix, bayes_rule: bool = True) -> Callable[[Any], Dict[str, float]]:
    """Return ``compute_metrics(eval_pred)`` for the Trainer.

    Scores the argmax prediction (keys ``accuracy``, ``cer``, ...) and, when
    ``bayes_rule``, the Bayes-risk decision ``argmin_j Σ_i p_i M[i, j]``
    (keys ``bayes_accuracy``, ``bayes_cer``, ...). The Trainer gathers every
    process's predictions before calling it, so values do not depend on the
    number of processes.
    """

    def compute_metrics(eval_pred: Any) -> Dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = np.asarray(logits, dtype=np.float64)
        labels = np.asarray(labels).astype(np.int64)
        out = critical_error_rate(logits.argmax(-1), labels, severity)
        result = {k: float(out[k]) for k in _SCALARS}
        if bayes_rule:
            decisions, _ = bayes_risk_decision(softmax(logits), severity)
            bayes = critical_error_rate(decisions, labels, severity)
            result.update({f"bayes_{k}": float(bayes[k]) for k in _SCALARS})
        return result

    return compute_metrics
