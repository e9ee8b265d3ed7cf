"""Frozen-backbone mode: embed once, then train only the classification head.

The embedding of an image is the input of the model's last ``nn.Linear`` (the
classifier), captured with a forward hook, so the same code serves timm models
(through ``TimmWrapper``) and native transformers models.  Embeddings are cached
as a :class:`datasets.Dataset` on disk, keyed by backbone, weights, image size,
preprocessing and the split's fingerprint; comparing losses then costs seconds
per run instead of a full fine-tuning.  After training, the head's weights are
copied back into the full model, which saves as an ordinary checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .atomic_io import publish_new_dir
from .data.metadata import dataset_fingerprint

__all__ = ["find_classifier", "classifier_inputs", "forward_pixels", "extract_embeddings", "embedding_key_parts", "embedding_cache_key", "embedding_cache_path",
           "cached_embeddings", "LinearHead", "copy_head_into_model"]


def find_classifier(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of the model's classifier (``timm_model.get_classifier()`` or ``.classifier``)."""
    if hasattr(model, "timm_model"):
        module = model.timm_model.get_classifier()
    elif hasattr(model, "classifier"):
        module = model.classifier
    else:
        raise ValueError(f"Cannot find the classifier of {type(model).__name__}: no .timm_model or .classifier")
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)] if not isinstance(module, nn.Linear) else [module]
    if not linears:
        raise ValueError(f"The classifier of {type(model).__name__} has no nn.Linear layer")
    return linears[-1]


@contextmanager
def classifier_inputs(model: nn.Module) -> Iterator[List[torch.Tensor]]:
    """Inside the block, every forward pass of ``model`` appends the input of its classifier (the
    last ``nn.Linear``, :func:`find_classifier`) to the yielded list, as float32 CPU tensors: the
    embedding of this package, in training (:func:`extract_embeddings`) and in inference alike. Passes
    run by other threads on the same model are not captured."""
    captured: List[torch.Tensor] = []
    caller = threading.get_ident()  # the hook sits on a model that other threads (Space requests) may run too

    def keep(mod, inp, out):
        if threading.get_ident() == caller:  # only this thread's forward passes
            captured.append(inp[0].detach().float().cpu())

    hook = find_classifier(model).register_forward_hook(keep)
    try:
        yield captured
    finally:
        hook.remove()


@torch.inference_mode()
def forward_pixels(model: nn.Module, pixel_batches: Iterable[torch.Tensor], *, embeddings: bool = False,
                   channels_last: bool = False, traced: Any = None) -> Tuple[List[np.ndarray], List[torch.Tensor]]:
    """The one batched forward pass of rcl_hf: behind :func:`extract_embeddings`,
    :func:`rcl_hf.inference.forward_logits` (and so ``predict``, the pipeline and the Space).

    Each batch of preprocessed ``pixel_values`` goes to the model's device (``channels_last`` for 4-D
    batches when asked) and through the model as it is (no mode change), or through ``traced`` (an object
    with ``accepts(pixels)`` and ``__call__(pixels) -> (logits, embeddings)``, e.g. the Space's
    :class:`rcl_hf.space.traced.TracedForward`) for the batches it accepts: the same numbers.

    Returns:
        ``(logits per batch as float32 numpy arrays, classifier inputs per batch as float32 CPU tensors)``; the
        second list (:func:`classifier_inputs`) is empty unless ``embeddings``.
    """
    device = next(model.parameters()).device
    logits_out: List[np.ndarray] = []
    with (classifier_inputs(model) if embeddings else nullcontext([])) as feats:
        for pixels in pixel_batches:
            pixels = pixels.to(device)
            if traced is not None and traced.accepts(pixels):
                logits, z = traced(pixels)
                if embeddings:
                    feats.append(z.detach().float().flatten(1).cpu())
            else:
                if channels_last and pixels.ndim == 4:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                logits = model(pixel_values=pixels).logits
            logits_out.append(logits.float().cpu().numpy())
    return logits_out, feats


def extract_embeddings(model: nn.Module, dataset: Any, batch_size: int = 64, desc: str = "embedding") -> np.ndarray:
    """Embeddings ``(N, D)`` of a dataset whose rows give ``pixel_values`` (with transforms applied).

    Unlike :func:`rcl_hf.inference.forward_logits` (which decodes raw images and runs the image
    processor per batch, on a model already in eval mode), the rows here come preprocessed by the
    training transforms, and the model is put in eval mode and ``channels_last`` for the pass (both
    restored after): ~1.6x faster CNN inference on CPU (EfficientNet-Lite0, 1 thread).  Both share
    :func:`forward_pixels`.
    """
    in_features = find_classifier(model).in_features
    was_training = model.training
    model.eval()
    model.to(memory_format=torch.channels_last)
    try:
        batches = (dataset[start : start + batch_size]["pixel_values"]
                   for start in tqdm(range(0, len(dataset), batch_size), desc=desc, leave=False))
        _, captured = forward_pixels(model, batches, embeddings=True, channels_last=True)
    finally:
        model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return torch.cat(captured).numpy() if captured else np.zeros((0, in_features), dtype=np.float32)


def embedding_key_parts(model: nn.Module, data_config: Dict[str, Any], *, backbone: str, pretrained: Optional[str],
                        image_size: int, dataset: str, split: str) -> Dict[str, Any]:
    """What a split's embeddings depend on besides its rows: the backbone (name, weights, timm
    ``model_args`` from ``model.config``), the input size and normalisation (``data_config``'s
    ``mean`` / ``std``), the dataset argument and the split's name.

    The one recipe of the frozen-backbone cache key: :func:`rcl_hf.train_job.run_training` embeds
    under it and the study's embedding pool (``research/embed_pool.py``) looks entries up with it.
    """
    return {"backbone": backbone, "pretrained": pretrained, "image_size": image_size,
            "mean": data_config["mean"], "std": data_config["std"], "dataset": dataset,
            "model_args": getattr(model.config, "model_args", None), "split": split}


def embedding_cache_key(key_parts: Dict[str, Any], raw_split: Any) -> str:
    """The name of a split's entry in the embedding cache: 16 hex digits of the SHA-1 of ``key_parts``
    (:func:`embedding_key_parts`), the split's ``datasets`` fingerprint
    (:func:`rcl_hf.data.metadata.dataset_fingerprint`) and its number of rows."""
    parts = {**key_parts, "fingerprint": dataset_fingerprint(raw_split), "n": len(raw_split)}
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def embedding_cache_path(cache_dir: Optional[str], key_parts: Dict[str, Any], raw_split: Any) -> Optional[str]:
    """``cache_dir/embeddings/<embedding_cache_key>`` (``None`` without a cache folder): where
    :func:`cached_embeddings` keeps a split's embeddings."""
    return os.path.join(cache_dir, "embeddings", embedding_cache_key(key_parts, raw_split)) if cache_dir else None


def cached_embeddings(
    model: nn.Module,
    dataset: Any,
    raw_split: Any,
    cache_dir: Optional[str],
    key_parts: Dict[str, Any],
    batch_size: int = 64,
):
    """A :class:`datasets.Dataset` with ``embeddings`` and ``labels``, computed once.

    ``dataset`` gives ``pixel_values``; ``raw_split`` (the untransformed split)
    supplies the fingerprint and labels.  With ``cache_dir`` the result is saved
    under :func:`embedding_cache_path` and reloaded by later runs.
    """
    import datasets

    path = embedding_cache_path(cache_dir, key_parts, raw_split)
    if path and os.path.exists(os.path.join(path, "dataset_info.json")):
        return datasets.load_from_disk(path).with_format("torch")
    emb = extract_embeddings(model, dataset, batch_size, desc=f"embedding {key_parts.get('split', '')}".strip())
    ds = datasets.Dataset.from_dict({"embeddings": emb.tolist(), "labels": list(raw_split["label"])},
                                    features=datasets.Features({
                                        "embeddings": datasets.Sequence(datasets.Value("float32"), length=emb.shape[1]),
                                        "labels": datasets.Value("int64"),
                                    }))
    if path:
        # the first writer wins (not commit_dir, which would replace a copy another process finished first)
        publish_new_dir(path, ds.save_to_disk)
        ds = datasets.load_from_disk(path)
    return ds.with_format("torch")


class LinearHead(nn.Module):
    """The classifier trained on cached embeddings: ``logits = W e + b``."""

    def __init__(self, in_features: int, num_labels: int, init_from: Optional[nn.Linear] = None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_labels)
        if init_from is not None:
            self.linear.load_state_dict(init_from.state_dict())

    def forward(self, embeddings: torch.Tensor, **_: Any) -> Dict[str, torch.Tensor]:
        return {"logits": self.linear(embeddings)}


def copy_head_into_model(head: LinearHead, model: nn.Module) -> None:
    """Write the trained head's weights into the full model's classifier."""
    target = find_classifier(model)
    target.load_state_dict(head.linear.state_dict())
