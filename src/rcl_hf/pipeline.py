"""The ``risk-aware-image-classification`` task for ``transformers.pipeline``.

Once ``rcl_hf`` is imported, ::

    from transformers import pipeline
    pipe = pipeline("risk-aware-image-classification", model="path/or/hub-id")
    pipe("scan.jpg")
    # {'label': 'glioma', 'refer': False, 'expected_cost': 0.012, 'out_of_distribution': False,
    #  'certified': True, 'argmax': 'glioma', 'scores': {...}, 'note': None}

answers with the model's decision layer (:mod:`rcl_hf.calibration`: the calibrated rule and the
certified referral threshold in ``risk_calibration.json``; the OOD guard in
``ood_guard.safetensors``) — the same computation as :func:`rcl_hf.predict`
(:func:`rcl_hf.inference.risk_summary`). ``threshold=`` overrides the certified threshold (the
answer is then not certified). The task is registered through
``transformers.pipelines.PIPELINE_REGISTRY.register_pipeline`` (the documented way to add a custom
pipeline); :mod:`rcl_hf.pipeline_registration` does it when ``transformers.pipelines`` is imported,
so ``import rcl_hf`` stays light.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch
from transformers import AutoModelForImageClassification, Pipeline

from .inference import _load_processor, as_rgb_image, attach_decision_layer, check_threshold, risk_summary

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
        return self.image_processor(images=[as_rgb_image(image)], return_tensors="pt")

    def _forward(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        feats = []
        hook = None
        if getattr(self.model, "ood_guard", None) is not None:
            from .frozen import find_classifier

            hook = find_classifier(self.model).register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
        try:
            logits = self.model(pixel_values=inputs["pixel_values"]).logits
        finally:
            if hook is not None:
                hook.remove()
        return {"logits": logits, "embeddings": feats[0].flatten(1) if feats else None}

    def postprocess(self, outputs: Dict[str, Any], threshold: Optional[float] = None) -> Dict[str, Any]:
        probs = torch.softmax(outputs["logits"].float(), -1).cpu().numpy()
        pred = risk_summary(probs, self.model.severity, threshold, getattr(self.model, "risk_calibration", None))
        guard = getattr(self.model, "ood_guard", None)
        ood = None
        if guard is not None and outputs["embeddings"] is not None:
            ood = bool(guard.flag(outputs["embeddings"].float().cpu().numpy())[0])
        record = pred.as_records()[0]
        return {
            "label": record["decision"], "refer": bool(record["refer"]) or bool(ood),
            "expected_cost": record["expected_cost"], "out_of_distribution": ood, "certified": pred.certified,
            "argmax": record["argmax"], "scores": record["probabilities"], "note": pred.note,
        }


def register() -> None:
    """Register :data:`TASK` with ``transformers.pipeline`` (idempotent)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=RiskAwareImageClassificationPipeline,
                                            pt_model=AutoModelForImageClassification, type="image")


register()  # importing this module makes the task available (rcl_hf.pipeline_registration imports it)
