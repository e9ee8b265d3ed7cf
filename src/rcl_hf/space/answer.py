"""The Space's answer for an image: the model's decision layer, worded for the page.

For one image and one model the answer is :meth:`rcl_hf.DecisionLayer.apply`'s, with the model's calibration
for the chosen target risk α (:meth:`rcl_hf.space.loading.SpaceModel.decision_layer`): a diagnosis, or "refer to
a specialist" with the reason in plain words —

* ``unusable``: the image is too small or blank (:func:`rcl_hf.space.inputs.check_usable`, before any model runs);
* ``outside``: the OOD guard (:mod:`rcl_hf.ood`) finds it unlike the training images: no diagnosis;
* ``uncertain``: the expected clinical cost of the decision exceeds the certified threshold.

A model without a calibration decides with the hand-set threshold and says it is not certified. The argmax and
the probabilities are kept for the details. The forward pass is :func:`rcl_hf.inference.forward_logits` (through
the model's traced forward pass when it has one): the same logits and embeddings as :func:`rcl_hf.predict`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..decision_layer import DEFAULT_REFERRAL_THRESHOLD, DecisionLayer, Prediction
from ..inference import forward_logits
from ..metrics.functional import expected_costs
from .certified import UNCERTIFIED_CHOICE, pretty_label
from .inputs import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, InputImageError, check_usable, load_input_image
from .loading import SpaceModel, as_space_model

__all__ = ["forward", "forward_batch", "score", "model_outputs", "analyze", "analyze_batch", "Output",
           "OOD_MESSAGE", "REFER_HEADLINE"]

REFER_HEADLINE = "Refer to a specialist"
OOD_MESSAGE = "Outside what this model knows"
#: One model's forward output for one image: ``(logits (K,), embedding (D,) or None without an OOD guard)``.
Output = Tuple[np.ndarray, Optional[np.ndarray]]


def forward(space_model: SpaceModel, rgb: Image.Image) -> Output:
    """``(logits (K,), embedding (D,) or None)`` of one image."""
    return forward_batch([space_model], [rgb])[0][0]


def forward_batch(models: Sequence[SpaceModel], rgbs: Sequence[Image.Image]) -> List[List[Output]]:
    """:func:`forward` of several images, one forward pass per model: ``out[image][model]``."""
    per_model = []
    for m in models:
        z, e = forward_logits(m.model, list(rgbs), embeddings=m.ood_guard is not None, traced=m.traced)
        per_model.append([(z[i], None if e is None else e[i]) for i in range(len(rgbs))])
    return [[outs[i] for outs in per_model] for i in range(len(rgbs))]


def _threshold(layer: DecisionLayer, threshold: Optional[float]) -> Optional[float]:
    """The Space's hand-set threshold applies to a model without a calibration only (a calibrated one is certified);
    :meth:`~rcl_hf.DecisionLayer.apply` checks it."""
    if layer.calibration is not None:
        return None
    return DEFAULT_REFERRAL_THRESHOLD if threshold is None else threshold


def _record(m: SpaceModel, key: Optional[str], layer: DecisionLayer, pred: Prediction, n: int) -> Dict[str, Any]:
    """Case ``n`` of ``pred`` as the page's record (see :func:`score`)."""
    rec = pred.as_records()[n]
    kind, cal, sev = rec["reason"], layer.calibration, m.severity
    if kind == "outside":
        reason = (f"Outside what this model knows: the image does not look like the {m.expects.split(' (')[0]} it was "
                  "trained on. No diagnosis is given.")
    elif kind == "uncertain":
        reason = ("Uncertain: the model is not sure enough to decide this case itself "
                  + ("within the certified risk." if cal is not None else "(hand-set threshold)."))
    elif kind == "unusable":
        reason = "Image unusable: it holds nothing to assess."
    else:
        reason = "The model decides this case itself."
    rec.update(
        model=m.name,
        headline=REFER_HEADLINE if rec["refer"] else pretty_label(rec["decision"]),
        diagnosis=None if rec["refer"] else rec["decision"],
        reason_kind=kind, reason=reason,
        risk_target=key or UNCERTIFIED_CHOICE,
        alpha=None if cal is None else float(cal.alpha),
        coverage=None if cal is None else float(cal.calibration.get("coverage", float("nan"))),
        certificate=pred.guarantees[0], guarantees=list(pred.guarantees),
        expects=m.expects, note=pred.note, threshold=float(pred.threshold),
        argmax_expected_cost=float(pred.argmax_expected_cost[n]),
        critical_classes=[label for label, pos in zip(sev.labels, sev.positive_rows) if pos],
        decision_costs={label: float(c) for label, c in zip(sev.labels, expected_costs(pred.probabilities[n:n + 1], sev)[0])},
        ood_threshold=pred.ood_threshold,
    )
    return rec


def score(space_model: SpaceModel, logits: Sequence[float], risk: Any = None, embedding: Optional[Sequence[float]] = None,
          threshold: Optional[float] = None) -> Dict[str, Any]:
    """The answer of one model for one image (JSON-ready), from its logits and (with an OOD guard) its embedding.

    ``risk``: the target share of critical cases missed (``"10%"`` or ``0.1``; ``None``: 10% when offered, else the
    model's default); it picks the calibration. Without calibrations the hand-set ``threshold`` (default
    :data:`~rcl_hf.decision_layer.DEFAULT_REFERRAL_THRESHOLD`) decides referrals and ``certified`` is False.

    Keys: ``headline`` (the diagnosis in words, or :data:`REFER_HEADLINE`), ``diagnosis`` (the decided class, ``None``
    when referred), ``refer``, ``reason_kind`` (``None``, ``"uncertain"`` or ``"outside"``), ``reason``, ``certified``,
    ``risk_target``, ``alpha``, ``coverage``, ``certificate``, ``guarantees``, ``expects``; details: ``decision`` (the
    calibrated rule's class, also when referred), ``argmax``, ``bayes_decision``, ``probabilities`` (calibrated),
    ``expected_cost``, ``threshold``, ``decision_costs``, ``critical_classes``, ``ood_score``, ``ood_threshold``,
    ``out_of_distribution``.
    """
    key, layer = space_model.decision_layer(risk)
    emb = None if embedding is None else np.asarray(embedding, dtype=np.float64)[None]
    pred = layer.apply(np.asarray(logits, dtype=np.float64)[None], emb, threshold=_threshold(layer, threshold), drift=False)
    return _record(space_model, key, layer, pred, 0)


def _models(model: Any, compare: Any) -> List[SpaceModel]:
    return [as_space_model(model, "model")] + ([as_space_model(compare, "compare")] if compare is not None else [])


def analyze(
    image: Any,
    risk: Any,
    model: Union[SpaceModel, Any],
    compare: Optional[Union[SpaceModel, Any]] = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    threshold: Optional[float] = None,
) -> Dict[str, Any]:
    """Analyse one image with one or two models: ``{"input": ..., "risk": ..., "models": [score(...), ...]}``.

    Raises:
        InputImageError: the image cannot be used (message fit for the user; ``kind="unusable"``: too small or blank).
        ValueError: a target risk the model does not offer, or a bad hand-set threshold.
    """
    models = _models(model, compare)
    for m in models:
        m.decision_layer(risk)  # an unknown target risk fails before any work
    rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
    check_usable(rgb, info)
    outs = [forward(m, rgb) for m in models]
    return {"input": info.as_dict(), "risk": risk, "models": model_outputs(models, outs, risk, threshold)}


def model_outputs(models: Sequence[SpaceModel], outputs: Sequence[Output], risk: Any = None,
                  threshold: Optional[float] = None) -> List[Dict[str, Any]]:
    """One :func:`score` record per model, from its :data:`Output` for the image."""
    return [score(m, z, risk, e, threshold) for m, (z, e) in zip(models, outputs)]


def analyze_batch(images: Sequence[Any], risk: Any, model: Union[SpaceModel, Any], *, names: Optional[Sequence[str]] = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
                  threshold: Optional[float] = None) -> Dict[str, Any]:
    """A batch with one model: ``{"rows": [{"name", "headline", "reason", ...}], "drift": DriftReport or None}``.

    Unusable or unreadable files get their refusal as the row; the rest go through the decision layer together,
    whose drift check says whether the batch shows a shift that may break the certified guarantee.
    """
    m = as_space_model(model, "model")
    key, layer = m.decision_layer(risk)
    names = list(names) if names is not None else [f"image {n + 1}" for n in range(len(images))]
    rows: List[Dict[str, Any]] = [{"name": n} for n in names]
    ok, rgbs = [], []
    for k, image in enumerate(images):
        try:
            rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
            check_usable(rgb, info)
        except InputImageError as err:
            rows[k].update(headline=REFER_HEADLINE, reason=f"Image unusable: {err}", reason_kind="unusable", diagnosis=None,
                           refer=True)
            continue
        ok.append(k)
        rgbs.append(rgb)
    drift = None
    if rgbs:
        z, e = forward_logits(m.model, rgbs, embeddings=layer.needs_embeddings, traced=m.traced)
        pred = layer.apply(z, e, threshold=_threshold(layer, threshold))
        drift = pred.drift
        for j, k in enumerate(ok):
            rows[k].update(_record(m, key, layer, pred, j))
    return {"rows": rows, "drift": drift, "risk_target": key or UNCERTIFIED_CHOICE}
