"""Risk-aware medical image classification: the rcl_hf Gradio Space (layout and command line only).

For each loaded model the Space shows the class probabilities, the argmax and
Bayes-risk decisions ``argmin_j Σ_i p_i M[i, j]``, expected costs, the critical
mass, a **REFER TO A SPECIALIST** flag when the Bayes decision's expected cost
exceeds τ, and the severity matrix. When the model carries an out-of-distribution
guard (``ood_guard.safetensors``, :mod:`rcl_hf.ood`) and the image lies outside its
training data, no diagnosis is shown: "Outside what this model was trained on — refer".
The computation lives in :mod:`rcl_hf.space` (tested there); this file is the layout.

Run::

    python spaces_demo/app.py --model PATH_OR_HUB_ID [--compare PATH_OR_HUB_ID] [--port 7860]
    python spaces_demo/app.py --train brain_tumor_mri --data_dir DIR --out runs/space   # train a real pair, then serve

There is no default model. On the Hub set ``RCL_MODEL`` (and ``RCL_COMPARE``,
``RCL_MODEL_LABEL``, ``RCL_COMPARE_LABEL``, ``RCL_TORCH_THREADS``). Research demo, not a medical device.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from rcl_hf.inference import DEFAULT_REFERRAL_THRESHOLD, check_threshold
from rcl_hf.plots import plot_severity_matrix
from rcl_hf.space.core import (OOD_MESSAGE, SpaceModel, SpaceStartupError, analyze, as_space_model, check_port_free,
                               examples_root, forward, load_space_model, make_examples, model_input_side,
                               model_outputs, resolve_model_ids, score)
from rcl_hf.space.inputs import (DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, InputImageError, InputInfo,
                                 load_input_image)
from rcl_hf.space.render import comparison_markdown, decision_card_html, input_markdown

logger = logging.getLogger("rcl_hf.space")

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_MB", "InputImageError", "InputInfo", "SpaceModel", "SpaceStartupError",
           "analyze", "build_demo", "launch_demo", "load_input_image", "load_space_model", "main", "make_examples",
           "resolve_model_ids", "score", "OOD_MESSAGE"]

_examples_root = examples_root  # the one folder served besides uploads (tests/test_security.py checks it)
DISCLAIMER = "Research demo of rcl_hf, **not a medical device**: do not use it for diagnosis."
_INTRO = """# Risk-aware medical image classification
**rcl_hf** puts a clinical *severity matrix* into the training loss, so that a model avoids the
mistakes that matter: a tumour called "no tumour", a malignant lesion called benign. Upload an
image: besides the class probabilities you see the **Bayes-risk decision** (the class with the lowest
expected clinical cost), the **critical mass** (probability on classes whose miss would be critical),
and a **referral flag** when the expected cost of the best decision exceeds the threshold below.
An image unlike the model's training data gets **no diagnosis** but a referral.
"""


def build_demo(
    model: Union[SpaceModel, Any],
    compare: Optional[Union[SpaceModel, Any]] = None,
    examples: Optional[Sequence[Union[str, Tuple[str, str]]]] = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    threshold: Optional[float] = None,
):
    """The Space's ``gr.Blocks``.

    The public API endpoint ``/analyze`` takes ``(image, threshold)`` and returns, per
    model, ``(label, decision_html, result_json)``, then the comparison markdown, the
    input description and the converted input. A bad threshold or image gives a
    ``gr.Error`` with one clear message, never a server traceback.
    """
    import gradio as gr

    models = [as_space_model(model, "model")] + ([as_space_model(compare, "compare")] if compare is not None else [])
    if len(models) == 2 and models[0].name == models[1].name:
        models[1] = replace(models[1], name=models[1].name + " (compare)")
    max_bytes = int(max_upload_mb * 1024 * 1024)
    tau0 = DEFAULT_REFERRAL_THRESHOLD if threshold is None else check_threshold(threshold)

    def preprocess_upload(payload: Any) -> Optional[str]:
        """Hand over the uploaded file's path unopened (``load_input_image`` decodes); only Gradio's upload folder."""
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if url and url.startswith("data:"):
            return url
        path = getattr(payload, "path", None)
        if not path:
            return None
        try:
            return _uploaded_path(path)
        except InputImageError as err:
            raise gr.Error(str(err), title="Refused", print_exception=False) from None

    def outputs_for(probs: Sequence[Any], ood: Sequence[Optional[float]], t: float) -> tuple:
        recs = model_outputs(models, probs, ood, t)
        out: List[Any] = []
        for rec in recs:
            out += [None if rec["out_of_distribution"] else rec["probabilities"], decision_card_html(rec), rec]
        out.append(comparison_markdown(recs) if len(models) > 1 else "")
        return tuple(out)

    def run(image: Any, tau: Any, clear_on_empty: bool = False):
        if image is None and clear_on_empty:
            return (*([None, "", None] * len(models)), "", "", None, None)
        try:
            t = check_threshold(tau)
            rgb, info = load_input_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
            results = [forward(m, rgb) for m in models]
        except (InputImageError, ValueError) as err:
            raise gr.Error(str(err), title="Cannot analyse this input", print_exception=False) from None
        except Exception as err:  # never crash the Space: one message, the trace in the log
            logger.error("analysis failed:\n%s", traceback.format_exc())
            raise gr.Error(f"The analysis failed unexpectedly ({type(err).__name__}: {err}).", title="Internal error") from None
        if info.notes:
            gr.Info("; ".join(info.notes), title="Input converted")
        preview = rgb.copy()
        preview.thumbnail((384, 384))
        probs, ood = [p for p, _ in results], [o for _, o in results]
        state = {"probs": [p.tolist() for p in probs], "ood": ood}
        return (*outputs_for(probs, ood, t), input_markdown(info.as_dict()), preview, state)

    def rescore(state: Optional[dict], tau: Any):
        if not state or not state.get("probs"):
            return tuple(gr.skip() for _ in range(3 * len(models) + 1))
        try:
            t = check_threshold(tau)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return outputs_for([np.asarray(p) for p in state["probs"]], state.get("ood") or [None] * len(models), t)

    with gr.Blocks(title="rcl_hf: risk-aware classification", analytics_enabled=False) as demo:
        gr.Markdown(_INTRO)
        gr.Markdown(DISCLAIMER)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = gr.Image(label="Image (PNG, JPEG, BMP, TIFF, WebP)", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], height=300, elem_id="rcl-input")
                image.preprocess = preprocess_upload  # type: ignore[method-assign]
                tau = gr.Slider(0.0, 1.0, value=tau0, step=0.01, label="Referral threshold τ (expected clinical cost)",
                                info="Refer to a specialist when the best decision's expected cost exceeds τ.",
                                elem_id="rcl-threshold")
                button = gr.Button("Analyze", variant="primary", elem_id="rcl-analyze")
                input_info = gr.Markdown(label="Input", elem_id="rcl-input-info")
                if examples:
                    pairs = [(e, Path(e).stem) if isinstance(e, (str, os.PathLike)) else (str(e[0]), str(e[1])) for e in examples]
                    synthetic = all(c.startswith("synthetic") for _, c in pairs)
                    gr.Examples(examples=[[p] for p, _ in pairs], inputs=[image], example_labels=[c for _, c in pairs],
                                label="Examples (synthetic, no patient data)" if synthetic else "Examples",
                                examples_per_page=12)
            outputs: List[Any] = []
            for k, m in enumerate(models):
                with gr.Column(scale=1, min_width=320):
                    guard = "with an out-of-distribution guard" if m.ood_guard is not None else "no out-of-distribution guard"
                    gr.Markdown(f"### {html.escape(m.name)}\n<small>{guard}</small>")
                    label = gr.Label(num_top_classes=len(m.labels), label=f"Class probabilities ({m.name})", elem_id=f"rcl-probs-{k}")
                    card = gr.HTML(label=f"Decision ({m.name})", elem_id=f"rcl-decision-{k}")
                    with gr.Accordion("Severity matrix (critical cells outlined)", open=True):
                        gr.Plot(value=plot_severity_matrix(m.severity, title=f"Severity matrix of {m.name}"),
                                format="png", label="Severity matrix", show_label=False)
                    with gr.Accordion("Raw result (JSON)", open=False):
                        raw = gr.JSON(label=f"Result JSON ({m.name})")
                    outputs += [label, card, raw]
        summary = gr.Markdown(label="Side by side", elem_id="rcl-compare")
        with gr.Accordion("Converted input (what the models receive before resizing)", open=False):
            preview = gr.Image(label="converted input", interactive=False, type="pil", format="png", height=220)
        state = gr.State()
        all_outputs = [*outputs, summary, input_info, preview, state]

        def analyze_image(image: Any, threshold: float):
            """Analyse one image: per model (probabilities, decision HTML, JSON), comparison, input info, converted input."""
            return run(image, threshold)

        button.click(analyze_image, [image, tau], all_outputs, api_name="analyze")
        image.change(lambda im, t: run(im, t, clear_on_empty=True), [image, tau], all_outputs, api_visibility="private")
        tau.release(rescore, [state, tau], [*outputs, summary], api_visibility="private")
        gr.Markdown(
            "Costs: `M[i, j]` is the clinical cost of predicting *j* when the truth is *i* (rcl_hf's presets: 0 correct, "
            "0.1 fine-grained, 0.3 over-call, 1.0 critical; a model may carry its own). Bayes-risk decision: "
            "`argmin_j Σ_i p_i M[i, j]`; referral when that minimum exceeds τ. Out-of-distribution guard: Mahalanobis "
            "distance of the penultimate embedding (Lee et al. 2018), threshold at 5% false alarms on validation. "
            "Method: Risk-Calibrated Learning (arXiv:2604.12693)."
        )
    return demo


def _uploaded_path(path: str) -> str:
    """Refuse any path outside Gradio's upload/cache folder (defence in depth)."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    abs_path = os.path.abspath(path)
    if not is_in_or_equal(abs_path, get_upload_folder()):
        raise InputImageError("Refusing to read a file that was not uploaded through this page.", "not_uploaded")
    return abs_path


def _host_port(host: Optional[str], port: Optional[int]) -> Tuple[str, int]:
    return host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1", int(port or os.environ.get("GRADIO_SERVER_PORT") or 7860)


def launch_demo(demo: Any, host: Optional[str] = None, port: Optional[int] = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                prevent_thread_lock: bool = False, quiet: bool = False):
    """Queue and launch ``demo`` (no share link, upload size capped); host/port default to
    ``$GRADIO_SERVER_NAME`` (else 127.0.0.1) and ``$GRADIO_SERVER_PORT`` (else 7860)."""
    host, port = _host_port(host, port)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo.launch(server_name=host, server_port=port, share=False, max_file_size=int(max_upload_mb * 1024 * 1024),
                       prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False, footer_links=["api"],
                       allowed_paths=[str(examples_root())], ssr_mode=False)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python spaces_demo/app.py",
        description="Risk-aware Gradio Space for rcl_hf classifiers (RCL_MODEL / RCL_COMPARE override --model / --compare).",
    )
    p.add_argument("--model", help="model folder saved by rcl_hf, or a Hub id")
    p.add_argument("--compare", help="second model shown side by side (e.g. a cross-entropy baseline)")
    p.add_argument("--train", metavar="DATASET", help="first train a frozen EfficientNet-Lite0 CE + RCL pair with its OOD "
                   "guard on DATASET (e.g. brain_tumor_mri, isic2018) from --data_dir, then serve it")
    p.add_argument("--data_dir", help="raw dataset folder for --train")
    p.add_argument("--out", default="runs/space", help="output folder of --train (default runs/space; reused when present)")
    p.add_argument("--max_train_samples", type=int, default=600, help="training images for --train (default 600)")
    p.add_argument("--model_label", default=os.environ.get("RCL_MODEL_LABEL"), help="name shown for --model")
    p.add_argument("--compare_label", default=os.environ.get("RCL_COMPARE_LABEL"), help="name shown for --compare")
    p.add_argument("--examples_dir", help="folder of example images (default: synthetic examples for synthetic models, else none)")
    p.add_argument("--host", default=None, help="bind address (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--threshold", type=float, default=None, help="initial referral threshold τ")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted width*height")
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest accepted upload (MB)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("RCL_TORCH_THREADS") or 1),
                   help="torch CPU threads per inference (default $RCL_TORCH_THREADS, else 1; see benchmarks/space_latency.py)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns a process exit code (2 on a start-up error, printed as one line)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        host, port = _host_port(args.host, args.port)
        check_port_free(host, port)  # before minutes of training or loading
        if args.examples_dir and not os.path.isdir(args.examples_dir):
            raise SpaceStartupError(f"--examples_dir {args.examples_dir!r} is not a folder.")
        if args.train:
            if args.model or args.compare:
                raise SpaceStartupError("--train trains the models to serve: drop --model / --compare.")
            from rcl_hf.space.train import train_space_pair

            pair = train_space_pair(args.train, args.data_dir, args.out, max_train_samples=args.max_train_samples)
            args.model, args.compare = pair["rcl"], pair["ce"]
            args.model_label = args.model_label or f"RCL ({args.train})"
            args.compare_label = args.compare_label or f"cross-entropy ({args.train})"
        model_id, compare_id = resolve_model_ids(args.model, args.compare)
        main_model = load_space_model(model_id, args.model_label)
        other = load_space_model(compare_id, args.compare_label) if compare_id else None
        if other is not None and other.labels != main_model.labels:
            logger.warning("the two models have different labels: %s vs %s", main_model.labels, other.labels)
        side = model_input_side([m for m in (main_model, other) if m is not None])
        examples = make_examples(args.examples_dir, image_size=side, labels=main_model.labels)
        demo = build_demo(main_model, other, examples, max_pixels=args.max_pixels,
                          max_upload_mb=args.max_upload_mb, threshold=args.threshold)
    except (SpaceStartupError, ValueError) as err:
        print(f"rcl_hf Space: cannot start: {err}", file=sys.stderr)
        return 2
    if args.threads and args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    launch_demo(demo, host, port, max_upload_mb=args.max_upload_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
