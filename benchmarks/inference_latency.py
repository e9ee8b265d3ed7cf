"""Inference latency per image and batch throughput on the Space's path (EfficientNet-Lite0, 224 px).

The model is the Space's: ``build_model("efficientnet_lite0", ..., image_size=224,
pretrained="efficientnet-lite0-package")`` (offline ImageNet weights), saved with
its image processor and loaded back with :func:`rcl_hf.inference.load_model`.
Input: a 256 x 256 RGB photo-like image (PIL), as the real data.

Per image, interleaved:

* ``rcl predict()``: :func:`rcl_hf.inference.predict` (image processor, forward,
  softmax, Bayes-risk decision, expected cost, referral);
* ``transformers pipeline``: ``pipeline("image-classification")`` on the same
  folder (the plain Hugging Face way to classify one image);
* ``forward only``: the network on a preprocessed tensor (the floor).

Batch throughput: :func:`rcl_hf.inference.predict_proba` at batch 1, 8, 32 (images/s).
The Space's end-to-end figures (upload, Gradio queue) are in ``space_latency.md``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any, Dict, Optional

SPACE_BUDGET_MS = 100.0


def run(quick: bool = False, real: bool = False, repeats: Optional[int] = None, **_: Any) -> Dict[str, Any]:
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from benchmarks import interleave, make_ratio, stats
    from rcl_hf.inference import load_model, predict, predict_proba
    from rcl_hf.models import build_image_processor, build_model, ensure_label_maps_in_config_file
    from rcl_hf.severity import SeverityMatrix

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    image_size = 64 if quick else 224
    repeats = repeats or (3 if quick else 30)
    batch_sizes = (1, 4) if quick else (1, 8, 32)
    severity = SeverityMatrix.preset("brain_tumor_mri")
    work = tempfile.mkdtemp(prefix="rcl_bench_infer_")
    try:
        model, data_config = build_model("efficientnet_lite0", severity, image_size=image_size,
                                         pretrained="efficientnet-lite0-package")
        build_image_processor(model, data_config).save_pretrained(work)
        model.save_pretrained(work)
        ensure_label_maps_in_config_file(work)
        loaded = load_model(work)
        pipe = transformers.pipeline("image-classification", model=work, device="cpu")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(0)
    # Smooth "photo-like" content (upsampled noise) rather than white noise.
    base = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((256, 256), Image.Resampling.BICUBIC)
    pixel_values = loaded.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    p_rcl = predict(loaded, image).probabilities[0]
    p_pipe = {d["label"]: d["score"] for d in pipe(image, top_k=None)}
    agree = bool(np.allclose(p_rcl, [p_pipe[label] for label in severity.labels], atol=1e-4))

    def forward() -> None:
        with torch.inference_mode():
            loaded(pixel_values=pixel_values)

    per_image = interleave({"rcl predict()": lambda: predict(loaded, image),
                            "transformers pipeline": lambda: pipe(image, top_k=None),
                            "forward only": forward}, repeats=repeats, warmup=3)
    s = {k: stats([t * 1e3 for t in v]) for k, v in per_image.items()}

    batch_ips: Dict[int, Dict[str, float]] = {}
    images = {bs: [image] * bs for bs in batch_sizes}
    reps = max(2, repeats // 3)
    bt = interleave({bs: (lambda bs=bs: predict_proba(loaded, images[bs], batch_size=bs)) for bs in batch_sizes},
                    repeats=reps, warmup=1)
    for bs in batch_sizes:
        batch_ips[bs] = stats([bs / t for t in bt[bs]])
    ratios = [
        make_ratio("per-image latency, rcl predict() vs transformers pipeline", "predict ms", "pipeline ms",
                   s["rcl predict()"]["median"], s["transformers pipeline"]["median"], None, "<=", "ms"),
        make_ratio("per-image latency, rcl predict() vs the Space's 100 ms budget", "predict ms", "100 ms",
                   s["rcl predict()"]["median"], SPACE_BUDGET_MS, 1.0, "<=", "ms"),
        make_ratio(f"batch throughput, batch {batch_sizes[-1]} vs batch 1", f"img/s at {batch_sizes[-1]}",
                   "img/s at 1", batch_ips[batch_sizes[-1]]["median"], batch_ips[1]["median"], None, ">=", "img/s"),
    ]
    rows = [[f"per image: {k}", v["median"], v["p10"], v["p90"], v["n"], 1e3 / v["median"]] for k, v in s.items()]
    rows += [[f"predict_proba, batch {bs}", 1e3 * bs / v["median"], 1e3 * bs / v["p90"], 1e3 * bs / v["p10"], v["n"],
              v["median"]] for bs, v in batch_ips.items()]
    pre_ms = s["rcl predict()"]["median"] - s["forward only"]["median"]
    findings = [
        f"predict() spends {s['forward only']['median']:.1f} ms in the network and {pre_ms:.1f} ms in "
        "preprocessing (image processor), softmax and the risk summary.",
        f"predict() and the pipeline give the same probabilities: {agree}.",
    ]
    return {
        "benchmark": "inference_latency",
        "title": f"Inference: EfficientNet-Lite0 at {image_size} px, per image and batched (CPU)",
        "config": {"model": "efficientnet_lite0 + efficientnet-lite0-package weights", "image_size": image_size,
                   "input": "256x256 RGB PIL image", "repeats": repeats, "batch_sizes": list(batch_sizes),
                   "torch_threads": torch.get_num_threads(), "quick": quick},
        "ratios": ratios,
        "table": {"columns": ["what", "median ms (batch: ms/batch)", "p10", "p90", "n", "images/s"], "rows": rows},
        "findings": findings,
        "raw": {"per_image_s": per_image, "batch_s": {str(k): v for k, v in bt.items()}, "agree": agree},
    }
