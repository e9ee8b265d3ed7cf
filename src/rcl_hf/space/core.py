"""The Space's computation without the UI: models, the certified decision, refusals, examples, start-up checks.

For one image and one model the answer is the **certified decision** (:func:`rcl_hf.inference.risk_summary`
with the model's :class:`~rcl_hf.calibration.RiskCalibration` for the chosen target risk α): a diagnosis,
or "refer to a specialist" with the reason in plain words —

* ``unusable``: the image is too small or blank (:func:`rcl_hf.space.inputs.check_usable`, before any model runs);
* ``outside``: the OOD guard (:mod:`rcl_hf.ood`) finds it unlike the training images: no diagnosis;
* ``uncertain``: the expected clinical cost of the decision exceeds the certified threshold.

A model without a calibration decides with the hand-set threshold and says it is not certified. The argmax
and the probabilities are kept for the details. :class:`Admission` bounds the work in flight: past it a request
gets "the service is busy" at once instead of a time-out.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..atomic_io import atomic_write_bytes
from ..inference import DEFAULT_REFERRAL_THRESHOLD, check_threshold, forward_images, risk_summary
from ..metrics.functional import expected_costs
from .certified import UNCERTIFIED_CHOICE, expected_images, load_calibrations, model_dataset, pretty_label, resolve_choice
from .inputs import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, InputImageError, check_usable, load_input_image

logger = logging.getLogger("rcl_hf.space")

__all__ = [
    "SpaceStartupError", "SpaceModel", "load_space_model", "as_space_model", "forward", "forward_batch", "score",
    "model_outputs", "analyze", "analyze_batch", "make_examples", "examples_root", "model_input_side", "resolve_model_ids", "check_port_free",
    "OOD_MESSAGE", "REFER_HEADLINE", "BUSY_MESSAGE", "UNCERTIFIED_TEXT", "Admission", "ServiceBusy",
]

REFER_HEADLINE = "Refer to a specialist"
OOD_MESSAGE = "Outside what this model knows"
BUSY_MESSAGE = "The service is busy — please try again in a minute."
UNCERTIFIED_TEXT = ("Not certified: this model carries no risk calibration, so its referrals follow a hand-set "
                    "threshold and nothing is guaranteed.")
EXAMPLES_PER_CLASS: int = 2
MAX_USER_EXAMPLES: int = 24
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class SpaceStartupError(RuntimeError):
    """The Space cannot start (no model named, a missing folder, an offline Hub id, a busy port)."""


class ServiceBusy(RuntimeError):
    """More requests are in flight than :class:`Admission` admits."""


class Admission:
    """At most ``workers`` analyses run at once and at most ``max_waiting`` more wait for a worker; a request
    beyond that is refused at once (:class:`ServiceBusy`) instead of queueing into a time-out."""

    def __init__(self, workers: int = 2, max_waiting: int = 16) -> None:
        if workers < 1 or max_waiting < 0:
            raise ValueError(f"need workers >= 1 and max_waiting >= 0, got {workers}, {max_waiting}")
        self.workers, self.max_waiting = int(workers), int(max_waiting)
        self._run = threading.Semaphore(self.workers)
        self._lock = threading.Lock()
        self.in_flight = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self.in_flight >= self.workers + self.max_waiting:
                raise ServiceBusy(BUSY_MESSAGE)
            self.in_flight += 1
        try:
            with self._run:
                yield
        finally:
            with self._lock:
                self.in_flight -= 1


@dataclass
class SpaceModel:
    """A loaded rcl_hf classifier with the name shown in the UI, its calibrations (one per target risk, keyed
    ``"10%"``; ``None``: read from the model and its folder) and the dataset it was trained on."""

    model: Any
    name: str
    source: str = ""
    calibrations: Optional[Dict[str, Any]] = None
    dataset: Optional[str] = None
    #: the forward pass traced once (:func:`rcl_hf.space.traced.trace_forward`), or ``None``: the eager model
    traced: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        folder = self.source if self.source and os.path.isdir(self.source) else None
        default = getattr(self.model, "risk_calibration", None)
        if self.calibrations is None:
            self.calibrations = load_calibrations(folder, default)
        if self.dataset is None:
            self.dataset = model_dataset(folder, self.labels, default)

    @property
    def severity(self):
        return self.model.severity

    @property
    def labels(self) -> List[str]:
        return list(self.model.severity.labels)

    @property
    def ood_guard(self):
        return getattr(self.model, "ood_guard", None)

    @property
    def certified(self) -> bool:
        return bool(self.calibrations)

    @property
    def expects(self) -> str:
        return expected_images(self.dataset, self.labels)


def _display_name(name_or_path: str) -> str:
    p = name_or_path.rstrip("/\\")
    return (os.path.basename(os.path.abspath(p)) or p) if os.path.isdir(p) else p


def load_space_model(name_or_path: str, label: Optional[str] = None) -> SpaceModel:
    """Load a model with :func:`rcl_hf.inference.load_model`; one-line :class:`SpaceStartupError` on failure."""
    name_or_path = str(name_or_path).strip()
    if not name_or_path:
        raise SpaceStartupError("The model name is empty: pass --model PATH_OR_HUB_ID or set RCL_MODEL.")
    expanded = os.path.expanduser(name_or_path)
    looks_local = name_or_path.startswith((".", "/", "~", "\\")) or name_or_path.rstrip("/").count("/") > 1 or os.path.exists(expanded)
    if looks_local and not os.path.exists(expanded):
        raise SpaceStartupError(f"Model folder {name_or_path!r} does not exist.")
    if os.path.isdir(expanded) and not os.path.isfile(os.path.join(expanded, "config.json")):
        raise SpaceStartupError(
            f"{name_or_path!r} is a folder but not a saved model: it has no config.json "
            "(save one with model.save_pretrained and image_processor.save_pretrained)."
        )
    from ..offline import HubUnavailableError
    from ..inference import load_model
    from .traced import trace_forward

    source = expanded if os.path.exists(expanded) else name_or_path
    try:
        model = load_model(source)
        # the Space's copy only infers: convolutions run 10-20% faster on CPU with channels-last weights
        # (outputs equal to float32 rounding, ~1e-8)
        model.to(memory_format=torch.channels_last)
        space_model = SpaceModel(model=model, name=label or _display_name(name_or_path), source=source,
                                 traced=trace_forward(model))
    except HubUnavailableError as err:
        raise SpaceStartupError(str(err)) from None
    except (OSError, ValueError) as err:
        raise SpaceStartupError(f"Cannot load model {name_or_path!r}: {err}") from None
    if model.ood_guard is None:
        logger.warning("%s has no OOD guard (ood_guard.safetensors): every input gets a diagnosis; fit one with "
                       "rcl-ood-guard --model DIR --dataset NAME --data_dir DIR", name_or_path)
    if not space_model.certified:
        logger.warning("%s has no risk calibration (risk_calibration.json): its answers are not certified", name_or_path)
    return space_model


def as_space_model(model: Any, default_name: str) -> SpaceModel:
    """A :class:`SpaceModel` from a SpaceModel or a model returned by ``load_model``."""
    if isinstance(model, SpaceModel):
        return model
    if not hasattr(model, "severity") or not hasattr(model, "image_processor"):
        raise TypeError("build_demo needs models from rcl_hf.inference.load_model (with .severity and .image_processor)")
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or default_name
    return SpaceModel(model=model, name=_display_name(name) or default_name, source=name)


def forward(space_model: SpaceModel, rgb: Image.Image) -> Tuple[np.ndarray, Optional[float]]:
    """``(probabilities (K,), ood_score or None)`` of one image."""
    return forward_batch([space_model], [rgb])[0][0]


def _probs_and_embeddings(m: SpaceModel, rgbs: Sequence[Image.Image]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """:func:`rcl_hf.inference.forward_images` of the model, through its trace when it has one (same numbers)."""
    guard = m.ood_guard
    if m.traced is not None:
        from ..inference import as_rgb_image

        x = m.model.image_processor(images=[as_rgb_image(im) for im in rgbs], return_tensors="pt")["pixel_values"]
        if m.traced.accepts(x):
            logits, z = m.traced(x.to(next(m.model.parameters()).device))
            p = torch.softmax(logits.float(), -1).cpu().numpy()
            return p, (z.float().flatten(1).cpu().numpy() if guard is not None else None)
    return forward_images(m.model, list(rgbs), embeddings=guard is not None)


def forward_batch(models: Sequence[SpaceModel], rgbs: Sequence[Image.Image]) -> List[List[Tuple[np.ndarray, Optional[float]]]]:
    """:func:`forward` of several images, one forward pass per model: ``out[image][model]``."""
    per_model = []
    for m in models:
        guard = m.ood_guard
        p, z = _probs_and_embeddings(m, rgbs)
        ood = guard.score(z).tolist() if guard is not None else [None] * len(rgbs)
        per_model.append([(p[i], None if o is None else float(o)) for i, o in enumerate(ood)])
    return [[outs[i] for outs in per_model] for i in range(len(rgbs))]


def _calibration(space_model: SpaceModel, risk: Any) -> Tuple[Optional[str], Any]:
    key = resolve_choice(risk, space_model.calibrations or {})
    return key, (space_model.calibrations[key] if key else None)


def score(space_model: SpaceModel, probabilities: Sequence[float], risk: Any = None, ood_score: Optional[float] = None,
          threshold: Optional[float] = None) -> Dict[str, Any]:
    """The answer of one model for one image (JSON-ready).

    ``risk``: the target share of critical cases missed (``"10%"`` or ``0.1``; ``None``: 10% when offered, else the
    model's default); it picks the calibration. Without calibrations the hand-set ``threshold`` (default
    :data:`~rcl_hf.inference.DEFAULT_REFERRAL_THRESHOLD`) decides referrals and ``certified`` is False.

    Keys: ``headline`` (the diagnosis in words, or :data:`REFER_HEADLINE`), ``diagnosis`` (the decided class, ``None``
    when referred), ``refer``, ``reason_kind`` (``None``, ``"uncertain"`` or ``"outside"``), ``reason``, ``certified``,
    ``risk_target``, ``alpha``, ``coverage``, ``certificate``, ``expects``; details: ``decision`` (the calibrated rule's
    class, also when referred), ``argmax``, ``bayes_decision``, ``probabilities`` (calibrated), ``expected_cost``,
    ``threshold``, ``decision_costs``, ``critical_classes``, ``ood_score``, ``ood_threshold``, ``out_of_distribution``.
    """
    sev = space_model.severity
    key, cal = _calibration(space_model, risk)
    t = None if cal is not None else (DEFAULT_REFERRAL_THRESHOLD if threshold is None else check_threshold(threshold))
    pred = risk_summary(np.asarray(probabilities, dtype=np.float64)[None], sev, t, cal)
    rec = pred.as_records()[0]
    guard = space_model.ood_guard
    ood = None if guard is None or ood_score is None else bool(ood_score > guard.threshold)
    refer = bool(rec["refer"] or ood)
    if ood:
        kind, reason = "outside", (f"Outside what this model knows: the image does not look like the "
                                   f"{space_model.expects.split(' (')[0]} it was trained on. No diagnosis is given.")
    elif refer:
        kind, reason = "uncertain", ("Uncertain: the model is not sure enough to decide this case itself "
                                     + ("within the certified risk." if cal is not None else "(hand-set threshold)."))
    else:
        kind, reason = None, "The model decides this case itself."
    rec.update(
        model=space_model.name,
        headline=REFER_HEADLINE if refer else pretty_label(rec["decision"]),
        diagnosis=None if refer else rec["decision"],
        refer=refer, reason_kind=kind, reason=reason,
        certified=bool(pred.certified), risk_target=key or UNCERTIFIED_CHOICE,
        alpha=None if cal is None else float(cal.alpha),
        coverage=None if cal is None else float(cal.calibration.get("coverage", float("nan"))),
        certificate=cal.certificate() if cal is not None else UNCERTIFIED_TEXT,
        expects=space_model.expects, note=pred.note, threshold=float(pred.threshold),
        argmax_expected_cost=float(pred.argmax_expected_cost[0]),
        critical_classes=[label for label, pos in zip(sev.labels, sev.positive_rows) if pos],
        decision_costs={label: float(c) for label, c in zip(sev.labels, expected_costs(pred.probabilities, sev)[0])},
        ood_score=None if ood_score is None else float(ood_score),
        ood_threshold=None if guard is None else float(guard.threshold),
        out_of_distribution=ood,
    )
    return rec


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
        _calibration(m, risk)  # an unknown target risk fails before any work
    rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
    check_usable(rgb, info)
    outs = [forward(m, rgb) for m in models]
    return {"input": info.as_dict(), "risk": risk,
            "models": model_outputs(models, [p for p, _ in outs], [o for _, o in outs], risk, threshold)}


def model_outputs(models: Sequence[SpaceModel], probs: Sequence[Any], ood: Sequence[Optional[float]], risk: Any = None,
                  threshold: Optional[float] = None) -> List[Dict[str, Any]]:
    """One :func:`score` record per model."""
    return [score(m, p, risk, o, threshold) for m, p, o in zip(models, probs, ood)]


def analyze_batch(images: Sequence[Any], risk: Any, model: Union[SpaceModel, Any], *, names: Optional[Sequence[str]] = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
                  threshold: Optional[float] = None) -> Dict[str, Any]:
    """A batch with one model: ``{"rows": [{"name", "headline", "reason", ...}], "drift": DriftReport or None}``.

    Unusable or unreadable files get their refusal as the row; the rest go through
    :func:`rcl_hf.inference.predict` together, whose drift check says whether the batch still looks like
    the calibration data.
    """
    from ..inference import predict

    m = as_space_model(model, "model")
    key, cal = _calibration(m, risk)
    names = list(names) if names is not None else [f"image {n + 1}" for n in range(len(images))]
    rows: List[Dict[str, Any]] = [{"name": n} for n in names]
    ok, rgbs = [], []
    for k, image in enumerate(images):
        try:
            rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
            check_usable(rgb, info)
        except InputImageError as err:
            rows[k].update(headline=REFER_HEADLINE, reason=f"Image unusable: {err}", reason_kind="unusable", diagnosis=None)
            continue
        ok.append(k)
        rgbs.append(rgb)
    drift = None
    if rgbs:
        t = None if cal is not None else (DEFAULT_REFERRAL_THRESHOLD if threshold is None else threshold)
        pred = predict(m.model, rgbs, threshold=t, calibration=cal)
        drift = pred.drift
        probs = pred.probabilities
        if cal is not None:  # score() applies the calibration itself: hand it the uncalibrated probabilities
            probs = _uncalibrate(probs, cal.temperature)
        for j, k in enumerate(ok):
            ood = None if pred.ood_score is None else float(pred.ood_score[j])
            rows[k].update(score(m, probs[j], key, ood, threshold))
    return {"rows": rows, "drift": drift, "risk_target": key or UNCERTIFIED_CHOICE}


def _uncalibrate(p: np.ndarray, temperature: float) -> np.ndarray:
    from ..metrics.functional import softmax

    return softmax(np.log(np.maximum(p, 1e-300)) * float(temperature), axis=1)


# ------------------------------------------------------------------------------ examples
def examples_root() -> Path:
    """Cache folder of the example PNGs (``$RCL_SPACE_CACHE`` or the temp folder); the only folder served."""
    return Path(os.environ.get("RCL_SPACE_CACHE") or Path(tempfile.gettempdir()) / "rcl_hf_space")


def model_input_side(models: Sequence[SpaceModel]) -> int:
    sides = []
    for m in models:
        size = getattr(m.model.image_processor, "size", None) or {}
        side = (size.get("height") or size.get("shortest_edge")) if isinstance(size, dict) else None
        if side:
            sides.append(int(side))
    return int(min(max(max(sides, default=224), 128), 384))


def _save_png(img: Image.Image, target: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(target, buf.getvalue())


def make_examples(
    examples_dir: Optional[str] = None,
    image_size: int = 224,
    per_class: int = EXAMPLES_PER_CLASS,
    seed: int = 0,
    cache_dir: Optional[Union[str, Path]] = None,
    labels: Optional[Sequence[str]] = None,
) -> List[Tuple[str, str]]:
    """Example images: ``[(png_path, caption), ...]``, re-saved as PNGs in the cache folder.

    With ``examples_dir``: up to :data:`MAX_USER_EXAMPLES` validated images of that
    folder. Without it: images generated from rcl_hf's synthetic dataset, but only
    when the model's ``labels`` are the synthetic ones (``None``: assume so); for
    any other model the gallery is hidden (``[]``): no example from another domain.
    """
    root = Path(cache_dir) if cache_dir else examples_root()
    out: List[Tuple[str, str]] = []
    if examples_dir:
        src = Path(examples_dir)
        if not src.is_dir():
            raise SpaceStartupError(f"--examples_dir {examples_dir!r} is not a folder.")
        dest = root / f"user-{hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]}"
        dest.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        for p in files[:MAX_USER_EXAMPLES]:
            try:
                rgb, _ = load_input_image(p)
            except InputImageError as err:
                logger.warning("skipping example %s: %s", p, err)
                continue
            _save_png(rgb, dest / f"{p.stem}.png")
            out.append((str(dest / f"{p.stem}.png"), p.stem))
        if not out:
            raise SpaceStartupError(f"--examples_dir {examples_dir!r} holds no readable image ({', '.join(_IMAGE_SUFFIXES)}).")
        return out

    from ..data.synthetic import SYNTHETIC_LABELS, load_synthetic

    if labels is not None and list(labels) != list(SYNTHETIC_LABELS):
        logger.info("no example images for labels %s: the gallery is hidden (pass --examples_dir)", list(labels))
        return []
    dest = root / f"synthetic-s{seed}-{image_size}px"
    dest.mkdir(parents=True, exist_ok=True)
    names = [f"{label}_{n + 1}" for label in SYNTHETIC_LABELS for n in range(per_class)]
    targets = [dest / f"{name}.png" for name in names]
    if not all(t.is_file() for t in targets):
        ds = load_synthetic(seed=seed, n_train=0, n_validation=0, n_test=max(40, 12 * per_class), image_size=image_size)["test"]
        taken: Dict[int, int] = {}
        for row in ds:
            y = int(row["label"])
            if taken.get(y, 0) < per_class:
                taken[y] = taken.get(y, 0) + 1
                _save_png(row["image"].convert("RGB"), dest / f"{SYNTHETIC_LABELS[y]}_{taken[y]}.png")
    return [(str(t), f"synthetic {n.replace('_', ' ')}") for t, n in zip(targets, names) if t.is_file()]


# ------------------------------------------------------------------------------ start-up
def resolve_model_ids(model: Optional[str], compare: Optional[str], environ: Optional[Mapping[str, str]] = None) -> Tuple[str, Optional[str]]:
    """``(model, compare)``: ``RCL_MODEL`` / ``RCL_COMPARE`` when set, else the CLI values.

    Raises:
        SpaceStartupError: when no model is named anywhere (there is no default model:
            a synthetic model must not pretend to read real images).
    """
    env = os.environ if environ is None else environ
    chosen = (env.get("RCL_MODEL") or "").strip() or (model or "").strip()
    if not chosen:
        raise SpaceStartupError(
            "No model to serve: pass --model PATH_OR_HUB_ID (a folder saved by rcl_hf or a Hub id), "
            "or --train DATASET --data_dir DIR to train a real-data pair first, or set RCL_MODEL (a Space variable)."
        )
    return chosen, (env.get("RCL_COMPARE") or "").strip() or (compare or "").strip() or None


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`SpaceStartupError` (one line) when ``host:port`` cannot be bound — before any model loads."""
    if not 0 < int(port) < 65536:
        raise SpaceStartupError(f"Port {port} is outside 1-65535.")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, int(port)))
        except OSError as err:
            raise SpaceStartupError(f"Port {port} on {host} is not free ({err.strerror}): pick another with --port.") from None
