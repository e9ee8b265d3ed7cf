"""The Space's computation without the UI: models, scoring with OOD referral, examples, start-up checks.

For one image and one model (SPEC.md section 1): probabilities ``p`` (softmax),
the argmax and Bayes-risk decisions (:func:`rcl_hf.inference.risk_summary`, i.e.
:func:`rcl_hf.metrics.functional.bayes_risk_decision`), expected costs, the
critical mass, the referral flag ``r > τ``, and — when the model carries an OOD
guard (:mod:`rcl_hf.ood`) — the OOD score: a flagged image gets *no* diagnosis,
only "outside what this model was trained on — refer".
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..crash_safety import atomic_write_bytes
from ..inference import check_threshold, forward_images, risk_summary
from ..metrics.functional import expected_costs
from .inputs import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, InputImageError, load_input_image

logger = logging.getLogger("rcl_hf.space")

__all__ = [
    "SpaceStartupError", "SpaceModel", "load_space_model", "as_space_model", "score", "model_outputs", "analyze",
    "make_examples", "examples_root", "model_input_side", "resolve_model_ids", "check_port_free", "OOD_MESSAGE",
]

OOD_MESSAGE = "Outside what this model was trained on — refer"
EXAMPLES_PER_CLASS: int = 2
MAX_USER_EXAMPLES: int = 24
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class SpaceStartupError(RuntimeError):
    """The Space cannot start (no model named, a missing folder, an offline Hub id, a busy port)."""


@dataclass
class SpaceModel:
    """A loaded rcl_hf classifier with the name shown in the UI."""

    model: Any
    name: str
    source: str = ""

    @property
    def severity(self):
        return self.model.severity

    @property
    def labels(self) -> List[str]:
        return list(self.model.severity.labels)

    @property
    def ood_guard(self):
        return getattr(self.model, "ood_guard", None)


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
    from ..hub.errors import HubUnavailableError
    from ..inference import load_model

    try:
        model = load_model(expanded if os.path.exists(expanded) else name_or_path)
    except HubUnavailableError as err:
        raise SpaceStartupError(str(err)) from None
    except (OSError, ValueError) as err:
        raise SpaceStartupError(f"Cannot load model {name_or_path!r}: {err}") from None
    if model.ood_guard is None:
        logger.warning("%s has no OOD guard (ood_guard.safetensors): every input gets a diagnosis; fit one with "
                       "rcl_hf.ood_fit.fit_ood_guard", name_or_path)
    return SpaceModel(model=model, name=label or _display_name(name_or_path), source=name_or_path)


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
    guard = space_model.ood_guard
    p, z = forward_images(space_model.model, [rgb], embeddings=guard is not None)
    return p[0], (float(guard.score(z)[0]) if guard is not None else None)


def score(space_model: SpaceModel, probabilities: Sequence[float], threshold: float, ood_score: Optional[float] = None) -> Dict[str, Any]:
    """The risk summary of one model's probabilities for one image (JSON-ready).

    Keys: ``model``, ``probabilities``, ``argmax``, ``bayes_decision``, ``expected_cost``,
    ``argmax_expected_cost``, ``critical_mass``, ``critical_classes``,
    ``critical_error_risk`` (``Σ_i p_i C[i, j]`` for the argmax and Bayes decisions),
    ``decision_costs``, ``refer``, ``threshold``, ``ood_score``, ``ood_threshold``,
    ``out_of_distribution`` (``None`` without a guard). An out-of-distribution image
    has ``refer`` True and ``diagnosis`` None; otherwise ``diagnosis`` is the Bayes decision.
    """
    sev = space_model.severity
    pred = risk_summary(np.asarray(probabilities, dtype=np.float64)[None], sev, threshold)
    rec = pred.as_records()[0]
    p = pred.probabilities[0]
    crit_risk = p @ sev.critical.astype(np.float64)
    a, b = int(pred.argmax[0]), int(pred.bayes_decision[0])
    guard = space_model.ood_guard
    ood = None if guard is None or ood_score is None else bool(ood_score > guard.threshold)
    rec.update(
        model=space_model.name,
        argmax_expected_cost=float(pred.argmax_expected_cost[0]),
        critical_classes=[label for label, pos in zip(sev.labels, sev.positive_rows) if pos],
        critical_error_risk={"argmax": float(crit_risk[a]), "bayes_decision": float(crit_risk[b])},
        decision_costs={label: float(c) for label, c in zip(sev.labels, expected_costs(p[None], sev)[0])},
        threshold=float(threshold),
        ood_score=None if ood_score is None else float(ood_score),
        ood_threshold=None if guard is None else float(guard.threshold),
        out_of_distribution=ood,
        refer=bool(rec["refer"] or ood),
        diagnosis=None if ood else rec["bayes_decision"],
    )
    return rec


def analyze(
    image: Any,
    threshold: float,
    model: Union[SpaceModel, Any],
    compare: Optional[Union[SpaceModel, Any]] = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
) -> Dict[str, Any]:
    """Analyse one image with one or two models: ``{"input": ..., "threshold": τ, "models": [score(...), ...]}``.

    Raises:
        InputImageError: the image cannot be used (message fit for the user).
        ValueError: a bad threshold.
    """
    t = check_threshold(threshold)
    models = [as_space_model(model, "model")] + ([as_space_model(compare, "compare")] if compare is not None else [])
    rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
    outs = [forward(m, rgb) for m in models]
    return {"input": info.as_dict(), "threshold": t, "models": model_outputs(models, [p for p, _ in outs], [o for _, o in outs], t)}


def model_outputs(models: Sequence[SpaceModel], probs: Sequence[Any], ood: Sequence[Optional[float]], t: float) -> List[Dict[str, Any]]:
    """One :func:`score` record per model."""
    return [score(m, p, t, o) for m, p, o in zip(models, probs, ood)]


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
