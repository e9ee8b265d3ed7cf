"""The file names of a training run folder, in one place.

``scripts/train.py`` (:func:`rcl_hf.train_job.run_training`) leaves in its output folder, beside the
model (safetensors weights, ``config.json``, ``preprocessor_config.json``), the files named here; the
Hub push (:mod:`rcl_hf.hub`), the Space (:mod:`rcl_hf.space`), the main job and the comparison
(:mod:`rcl_hf.comparison`) read them back by these names.

This module imports nothing, so any layer may name a run's files without importing the one that
writes or reads them.
"""

from __future__ import annotations

__all__ = ["EXTRA_JSON_FILES", "PREDICTIONS_SUFFIX", "RESULTS_FILE", "RESULT_FILES", "RUN_FILE", "predictions_file"]

#: The recipe of the run: arguments, severity matrix, split sizes, wall time, best checkpoint.
RUN_FILE = "rcl_run.json"
#: rcl_hf's results of the run: metrics per split (with per-class recall, confusion matrix) and the
#: certified decision layer's scores (``risk_control``).
RESULTS_FILE = "rcl_results.json"
#: Result files the Trainer writes (``Trainer.save_metrics``), merged in this order (later files win).
RESULT_FILES = ("all_results.json", "eval_results.json", "validation_results.json", "test_results.json")
#: Other JSON files of a training run that travel with the model.
EXTRA_JSON_FILES = ("train_results.json", "trainer_state.json", "severity.json", "risk_calibration.json", RESULTS_FILE)
#: The acceptance check of a model folder (``scripts/check_model.py``), which travels with the model and fills its card.
CHECK_REPORT, CHECK_RESULTS = "check.md", "check.json"
#: Ending of the saved predictions of a split (:func:`predictions_file`).
PREDICTIONS_SUFFIX = "_predictions.npz"


def predictions_file(split: str) -> str:
    """``<split>_predictions.npz``: the logits, labels (and ``groups``) of one split, ``"validation"`` or ``"test"``."""
    return split + PREDICTIONS_SUFFIX
