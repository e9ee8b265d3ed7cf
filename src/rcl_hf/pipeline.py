"""The ``risk-aware-image-classification`` task for ``transformers.pipeline``.

Once ``rcl_hf`` is imported, ::

    from transformers import pipeline
    pipe = pipeline("risk-aware-image-classification", model="path/or/hub-id")
    pipe("scan.jpg")
    # {'label': 'glioma', 'refer': False, 'reason': None, 'expected_cost': 0.012, 'out_of_distribution': False,
    #  'certified': True, 'argmax': 'glioma', 'scores': {...}, 'note': None, 'guarantees': [...]}

answers with the model's decision layer (:class:`rcl_hf.DecisionLayer`: the calibrated rule and the
certified referral threshold in ``risk_calibration.json``; the OOD guard in
``ood_guard.safetensors``): the same forward pass (:func:`rcl_hf.frozen.forward_pixels`) and the same
:meth:`~rcl_hf.DecisionLayer.apply` as :func:`rcl_hf.predict`, so an image is referred (``refer``) for the
same reason (``"unusable"``, ``"outside"`` or ``"uncertain"``). ``label`` is the rule's decision, also
when the case is referred. ``threshold=`` overrides the certified threshold (the answer is then not certified). The task is registered through
``transformers.pipelines.PIPELINE_REGISTRY.register_pipeline`` (the documented way to add a custom
pipeline); :mod:`rcl_hf.pipeline_registration` does it when ``transformers.pipelines`` is imported,
so ``import rcl_hf`` stays light.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch
from transformers import AutoModelForImageClassification, Pipeline

from .data.images import usability_problem
from .decision_layer import DecisionLayer, check_threshold
from .frozen import forward_pixels
from .inference import _load_processor, as_rgb_image, attach_decision_layer

__all__ = ["RiskAwareImageClassificationPipeline", "TASK", "register"]

TASK = "risk-aware-image-classification"


class RiskAwareImageClassificationPipeline(Pipeline):
    """Image classification with the decision layer: label (or referral), expected cost, OOD flag."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name = str(getattr(self.model, "name_or_path", "") or getattr(self.model.config, "_name_or_path", ""))
        if not hasattr(self.model, "risk_calibration"):
            attach_decision_layer(self.model, name)
        if os.path.isdir(name):  # the processor class training saved, not the one the model type suggests
            self.image_processor = _load_processor(name)

    def _sanitize_parameters(self, threshold: Optional[float] = None, **kwargs: Any):
        post = {} if threshold is None else {"threshold": check_threshold(threshold)}
        return {}, {}, post

    def preprocess(self, image: Any) -> Dict[str, Any]:
        rgb = as_rgb_image(image)
        inputs = self.image_processor(images=[rgb], return_tensors="pt")
        inputs["unusable"] = torch.tensor([usability_problem(rgb) is not None])
        return inputs

    def _forward(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        layer = DecisionLayer.from_model(self.model)
        logits, feats = forward_pixels(self.model, [inputs["pixel_values"]], embeddings=layer.needs_embeddings)
        # tensors, so that the pipeline's batching can split them per image
        return {"logits": torch.from_numpy(logits[0]), "embeddings": feats[0] if feats else None,
                "unusable": inputs["unusable"]}

    def postprocess(self, outputs: Dict[str, Any], threshold: Optional[float] = None) -> Dict[str, Any]:
        emb = outputs["embeddings"]
        pred = DecisionLayer.from_model(self.model).apply(
            outputs["logits"].numpy(), None if emb is None else emb.numpy(), threshold=threshold,
            unusable=outputs["unusable"].numpy().reshape(-1), drift=False)
        record = pred.as_records()[0]
        return {
            "label": record["decision"], "refer": record["refer"], "reason": record["reason"],
            "expected_cost": record["expected_cost"], "out_of_distribution": record["out_of_distribution"],
            "certified": pred.certified, "argmax": record["argmax"], "scores": record["probabilities"], "note": pred.note,
            "guarantees": pred.guarantees,
        }


def register() -> None:
    """Register :data:`TASK` with ``transformers.pipeline`` (idempotent)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=RiskAwareImageClassificationPipeline,
                                            pt_model=AutoModelForImageClassification, type="image")


register()  # importing this module makes the task available (rcl_hf.pipeline_registration imports it)
