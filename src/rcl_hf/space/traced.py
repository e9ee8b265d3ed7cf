"""The Space's forward pass as one TorchScript call: the same numbers, without the GIL.

An eager forward pass of EfficientNet-Lite0 returns to Python between its ~300 modules, and each return needs
the GIL: beside the Space's other threads (Gradio's event loop, the requests decoding their images) it waited
for the GIL at every module (one image: 32 ms alone, 128 ms beside one busy Python thread). Traced once when the
Space loads the model, the pass runs in C++ with the GIL released (25 ms alone, 67 ms beside the busy thread).

The trace returns the logits and the classifier's input (the OOD guard's embedding). It is checked against the
eager model on probe batches of 1 and 3 and used only for inputs of the traced shape (a trace freezes shape
arithmetic such as TF "same" padding); anything else, or a model that does not trace, runs eagerly.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional, Tuple

import torch

logger = logging.getLogger("rcl_hf.space")

__all__ = ["TracedForward", "trace_forward"]

#: Largest absolute difference allowed between traced and eager logits / embeddings on the probe batches.
TOLERANCE = 1e-4


class _WithEmbeddings(torch.nn.Module):
    def __init__(self, model: Any, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.classifier = model, classifier

    def forward(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = []
        hook = self.classifier.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
        try:
            logits = self.model(pixel_values=pixel_values).logits
        finally:
            hook.remove()
        return logits, feats[0]


class TracedForward:
    """``(logits, embeddings)`` of a batch of ``pixel_values`` of shape ``(N, *input_shape)``."""

    def __init__(self, module: Any, input_shape: Tuple[int, ...]) -> None:
        self.module, self.input_shape = module, tuple(input_shape)

    def accepts(self, pixel_values: torch.Tensor) -> bool:
        return tuple(pixel_values.shape[1:]) == self.input_shape and pixel_values.dtype == torch.float32

    def __call__(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            logits, z = self.module(pixel_values)
        return logits, z


def trace_forward(model: Any) -> Optional[TracedForward]:
    """Trace ``model`` (loaded by :func:`rcl_hf.inference.load_model`) on its image processor's input shape;
    ``None`` (the eager model is used) when it cannot be traced or the trace differs from it."""
    from ..frozen import find_classifier

    try:
        from PIL import Image

        processor = model.image_processor
        probe = [Image.effect_noise((256, 256), 64).convert("RGB"), Image.linear_gradient("L").convert("RGB"),
                 Image.effect_mandelbrot((300, 200), (-2.0, -1.0, 1.0, 1.0), 60).convert("RGB")]
        x = processor(images=probe, return_tensors="pt")["pixel_values"].to(next(model.parameters()).device)
        wrapper = _WithEmbeddings(model, find_classifier(model)).eval()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about frozen shape arithmetic: checked below
            module = torch.jit.trace(wrapper, x[:2], check_trace=False, strict=False)
            for batch in (x[:1], x):
                ref, got = wrapper(batch), module(batch)
                diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ref, got))
                if ref[0].shape != got[0].shape or ref[1].shape != got[1].shape or not diff <= TOLERANCE:
                    logger.warning("the traced model differs from the eager one (%.2g): the Space runs it eagerly", diff)
                    return None
    except Exception as err:  # noqa: BLE001 - any model that does not trace runs eagerly
        logger.warning("cannot trace the model (%s: %s): the Space runs it eagerly", type(err).__name__, err)
        return None
    return TracedForward(module, tuple(x.shape[1:]))
