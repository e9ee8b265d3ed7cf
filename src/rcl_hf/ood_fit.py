"""Fitting the out-of-distribution guard (:class:`rcl_hf.ood.OODGuard`) of a saved model.

:func:`fit_ood_guard` embeds a seeded sample of the training split (class means and the
shared covariance) and of the validation split (the threshold) with the model's own
saved preprocessing, and writes ``ood_guard.safetensors`` beside the weights, where
:func:`rcl_hf.load_model` finds it. :func:`fit_ood_guard_on_embeddings` does the same from
embeddings already computed (a frozen-backbone run has them: no image is embedded twice),
with the same seeded samples, so both give the same guard.

From the shell: ``rcl-ood-guard`` (:mod:`rcl_hf.commands.ood_guard`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .inference import forward_logits, load_model
from .ood import DEFAULT_FALSE_ALARM_DELTA, DEFAULT_FALSE_ALARM_RATE, fit_guard_from_embeddings

__all__ = ["embed_images", "fit_ood_guard", "fit_ood_guard_on_embeddings"]


def embed_images(model: Any, images: Sequence[Any], image_processor: Any = None, batch_size: int = 32) -> np.ndarray:
    """Penultimate embeddings ``(N, D)`` of images (anything :func:`rcl_hf.inference.predict` accepts)."""
    return forward_logits(model, images, image_processor, batch_size=batch_size, embeddings=True)[1]


def _sample_rows(n: int, limit: Optional[int], seed: int) -> np.ndarray:
    """The rows a guard is fitted on: all ``n``, or a seeded sample of ``limit`` in their order."""
    idx = np.arange(n)
    if limit is not None and n > limit:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return idx


def _column_images(split: Any, limit: Optional[int], seed: int):
    idx = _sample_rows(len(split), limit, seed)
    rows = split.select(idx.tolist()) if hasattr(split, "select") else [split[i] for i in idx]
    images = rows["image"] if hasattr(rows, "column_names") else [r["image"] for r in rows]
    labels = np.asarray(rows["label"] if hasattr(rows, "column_names") else [r["label"] for r in rows])
    return images, labels


def fit_ood_guard(
    model_dir: Union[str, os.PathLike],
    train: Any,
    validation: Any,
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    delta: Optional[float] = DEFAULT_FALSE_ALARM_DELTA,
    max_samples: Optional[int] = 2000,
    max_calibration_samples: Optional[int] = 5000,
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """Fit the guard of a saved model and write ``ood_guard.safetensors`` into ``model_dir``.

    Args:
        model_dir: a folder saved by rcl_hf (``load_model`` reads it).
        train: the training split (``datasets.Dataset`` or list of rows with
            ``image`` and ``label``): class means and covariance.
        validation: the validation split (``image`` column): the threshold, by the
            conformal rule on its scores (:func:`rcl_hf.ood.conformal_threshold`).
        false_alarm_rate: target share of in-distribution images flagged, in (0, 0.5].
        delta: the guard's false-alarm rate is at most ``false_alarm_rate`` with confidence
            ``1 - delta`` (default 0.1); ``None``: on average only (split-conformal).
        max_samples: at most this many training rows are embedded (a seeded sample).
        max_calibration_samples: at most this many validation rows place the threshold (all of a
            typical validation split: the more, the closer held-out false alarms stay to the target).

    Returns:
        The path of the written file.
    """
    _check_validation(len(validation))  # before the model is loaded
    model = load_model(os.fspath(model_dir))
    tr_images, tr_labels = _column_images(train, max_samples, seed)
    va_images, _ = _column_images(validation, max_calibration_samples, seed)
    # the rows are sampled already: the embeddings path fits on all of them
    return fit_ood_guard_on_embeddings(
        model_dir, embed_images(model, tr_images, batch_size=batch_size), tr_labels,
        embed_images(model, va_images, batch_size=batch_size), false_alarm_rate=false_alarm_rate, delta=delta,
        labels=[model.config.id2label[i] for i in range(model.config.num_labels)], max_samples=None,
        max_calibration_samples=None, seed=seed,
    )


def fit_ood_guard_on_embeddings(
    model_dir: Union[str, os.PathLike],
    train_embeddings: Any,
    train_labels: Sequence[int],
    validation_embeddings: Any,
    *,
    labels: Sequence[str],
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    delta: Optional[float] = DEFAULT_FALSE_ALARM_DELTA,
    max_samples: Optional[int] = 2000,
    max_calibration_samples: Optional[int] = 5000,
    seed: int = 0,
) -> Path:
    """:func:`fit_ood_guard` from penultimate embeddings already computed with the model's own preprocessing
    (``(N, D)`` rows of the training and validation splits, in split order): the same seeded samples, the same
    guard, no forward pass (:func:`fit_ood_guard` samples and embeds its rows, then fits here). Writes
    ``ood_guard.safetensors`` into ``model_dir`` and returns its path."""
    train_embeddings, validation_embeddings = np.asarray(train_embeddings), np.asarray(validation_embeddings)
    train_labels = np.asarray(train_labels)
    if len(train_embeddings) != len(train_labels):
        raise ValueError(f"{len(train_embeddings)} training embeddings but {len(train_labels)} labels")
    _check_validation(len(validation_embeddings))
    tr = _sample_rows(len(train_embeddings), max_samples, seed)
    va = _sample_rows(len(validation_embeddings), max_calibration_samples, seed)
    guard = fit_guard_from_embeddings(train_embeddings[tr], train_labels[tr], validation_embeddings[va],
                                      false_alarm_rate=false_alarm_rate, delta=delta, labels=list(labels))
    return guard.save(model_dir)


def _check_validation(n: int) -> None:
    if n < 20:
        raise ValueError(f"the validation split has {n} rows: at least 20 are needed to place the threshold")
