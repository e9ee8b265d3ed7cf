"""The Space's event handlers: what ``spaces_demo/app.py`` wires to its buttons and API endpoints.

One :class:`SpaceHandlers` per page holds the models, the :class:`~rcl_hf.space.admission.Admission` that bounds the
work in flight (past it a request gets :data:`~rcl_hf.space.admission.BUSY_MESSAGE` at once) and the
:class:`~rcl_hf.space.batching.ForwardBatcher` through which concurrent requests share forward passes. Per request
only the request's own work is done: decode, usability check, scoring and the HTML of its answer; everything that
is per model (weights, calibrations, the OOD guard's matrices, the cost heat map) is prepared once.
"""

from __future__ import annotations

import logging
import math
import os
import traceback
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from .batching import ForwardBatcher
from .certified import UNCERTIFIED_CHOICE, resolve_choice
from .admission import BUSY_MESSAGE, Admission, ServiceBusy
from .answer import Output, analyze_batch, model_outputs
from .loading import SpaceModel
from .inputs import InputImageError, check_usable, load_input_image
from .render import batch_markdown, certificate_markdown, comparison_markdown, decision_card_html, input_markdown, refusal_card_html

logger = logging.getLogger("rcl_hf.space")

__all__ = ["SpaceHandlers", "uploaded_path"]


def uploaded_path(path: str) -> str:
    """Refuse any path outside Gradio's upload/cache folder (defence in depth)."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    abs_path = os.path.abspath(path)
    if not is_in_or_equal(abs_path, get_upload_folder()):
        raise InputImageError("Refusing to read a file that was not uploaded through this page.", "not_uploaded")
    return abs_path


class SpaceHandlers:
    """The handlers of one page for ``models`` (the first one decides the target-risk control).

    ``workers``: analyses at once (decode, checks, forward); ``max_waiting``: requests that may wait for one;
    ``max_batch_size``: images one forward pass may take (``ceil(workers / max_batch_size)`` passes run at once).
    """

    def __init__(self, models: Sequence[SpaceModel], *, max_pixels: int, max_bytes: int, threshold: Optional[float] = None,
                 workers: int = 2, max_waiting: int = 48, max_batch_size: int = 1) -> None:
        self.models = list(models)
        self.max_pixels, self.max_bytes, self.threshold = max_pixels, max_bytes, threshold
        self.admission = Admission(workers, max_waiting)
        batch = max(1, min(int(max_batch_size), self.admission.workers))
        self.forward = ForwardBatcher(self.models, max_batch_size=batch, threads=math.ceil(self.admission.workers / batch))

    # ------------------------------------------------------------------ helpers
    def _risk(self, risk: Any) -> Any:
        return None if risk in (None, "", UNCERTIFIED_CHOICE) or not self.models[0].calibrations else risk

    def outputs_for(self, outputs: Sequence[Output], risk: Any) -> tuple:
        """Per model ``(probabilities or None when outside, card HTML, record)``, then the comparison markdown."""
        recs = model_outputs(self.models, outputs, self._risk(risk), self.threshold)
        out: List[Any] = []
        for rec in recs:
            out += [None if rec["out_of_distribution"] else rec["probabilities"], decision_card_html(rec), rec]
        out.append(comparison_markdown(recs) if len(self.models) > 1 else "")
        return tuple(out)

    def preprocess_upload(self, payload: Any) -> Optional[str]:
        """Hand over the uploaded file's path unopened (``load_input_image`` decodes); only Gradio's upload folder."""
        import gradio as gr

        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if url and url.startswith("data:"):
            return url
        path = getattr(payload, "path", None)
        if not path:
            return None
        try:
            return uploaded_path(path)
        except InputImageError as err:
            raise gr.Error(str(err), title="Refused", print_exception=False) from None

    # ------------------------------------------------------------------ events
    def run(self, image: Any, risk: Any, clear_on_empty: bool = False) -> tuple:
        """One image: per model (probabilities, card, record), comparison, input description, preview, state."""
        import gradio as gr

        models = self.models
        if image is None and clear_on_empty:
            return (*([None, "", None] * len(models)), "", "", None, None)
        try:
            with self.admission.slot():
                for m in models:
                    resolve_choice(self._risk(risk), m.calibrations or {})
                rgb, info = load_input_image(image, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
                try:
                    check_usable(rgb, info)
                except InputImageError as err:  # an answer, not an error: refer, image unusable
                    refusal = {"refused": True, "reason_kind": "unusable", "reason": str(err), "refer": True, "diagnosis": None}
                    cards = [[None, refusal_card_html(str(err), m.expects), {**refusal, "model": m.name}] for m in models]
                    return (*[x for c in cards for x in c], "", input_markdown(info.as_dict()), None, None)
                results = self.forward(rgb)
        except ServiceBusy:
            raise gr.Error(BUSY_MESSAGE, title="Service busy", print_exception=False) from None
        except (InputImageError, ValueError) as err:
            raise gr.Error(str(err), title="Cannot analyse this input", print_exception=False) from None
        except Exception as err:  # never crash the Space: one message, the trace in the log
            logger.error("analysis failed:\n%s", traceback.format_exc())
            raise gr.Error(f"The analysis failed unexpectedly ({type(err).__name__}: {err}).", title="Internal error") from None
        if info.notes:
            gr.Info("; ".join(info.notes), title="Input converted")
        preview = rgb.copy()
        preview.thumbnail((256, 256))
        state = {"outputs": [(z.tolist(), None if e is None else e.tolist()) for z, e in results]}
        return (*self.outputs_for(results, risk), input_markdown(info.as_dict()), preview, state)

    def rescore(self, state: Optional[dict], risk: Any) -> tuple:
        """The target risk changed: the answers of the last image again (no forward pass), and the certificate."""
        import gradio as gr

        models = self.models
        cert = certificate_markdown(models, resolve_choice(self._risk(risk), models[0].calibrations or {}))
        if not state or not state.get("outputs"):
            return (*(gr.skip() for _ in range(3 * len(models) + 1)), cert)
        outputs = [(np.asarray(z), None if e is None else np.asarray(e)) for z, e in state["outputs"]]
        return (*self.outputs_for(outputs, risk), cert)

    def run_batch(self, files: Any, risk: Any) -> str:
        """A batch of files with the first model: a markdown table with the drift verdict."""
        import gradio as gr

        paths = [uploaded_path(getattr(f, "path", None) or str(f)) for f in (files or [])]
        if not paths:
            raise gr.Error("No images received: choose one or more image files.", print_exception=False)
        try:
            with self.admission.slot():
                res = analyze_batch(paths, self._risk(risk), self.models[0], names=[Path(p).name for p in paths],
                                    max_pixels=self.max_pixels, max_bytes=self.max_bytes, threshold=self.threshold)
        except ServiceBusy:
            raise gr.Error(BUSY_MESSAGE, title="Service busy", print_exception=False) from None
        except ValueError as err:
            raise gr.Error(str(err), title="Cannot analyse this batch", print_exception=False) from None
        return batch_markdown(res)
