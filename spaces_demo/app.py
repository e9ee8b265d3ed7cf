"""Risk-aware medical image classification: the rcl_hf Gradio Space (layout and command line only).

The page leads with the **certified decision** of each model: a diagnosis, or "Refer to a specialist" with
the reason in plain words (uncertain, outside what the model knows, image unusable). The control is the
target risk — the share of critical cases the model may miss — among the values the model folder carries a
calibration for (``risk_calibration.json`` and ``risk_calibrations/``, :mod:`rcl_hf.space.certified`); the
page shows what each buys (the certificate). A model without a calibration says "not certified". The most
probable class and the probabilities are in collapsed details. A batch tab says when a batch drifts away from
the calibration data. The computation lives in :mod:`rcl_hf.space` (tested there); this file is the layout.

Run::

    python spaces_demo/app.py                # the shipped Brain-MRI model (models/, or rcl-hf/... from the HF cache)
    python spaces_demo/app.py --model rcl-hf/isic2018-efficientnet-lite0   # the shipped ISIC 2018 model
    python spaces_demo/app.py --model PATH_OR_HUB_ID [--compare PATH_OR_HUB_ID] [--port 7860]
    python spaces_demo/app.py --train brain_tumor_mri --data_dir DIR --out runs/space   # train a real pair, then serve

With no model named it serves ``rcl-hf/brain-tumor-mri-efficientnet-lite0``. On the Hub set ``RCL_MODEL`` (and ``RCL_COMPARE``,
``RCL_MODEL_LABEL``, ``RCL_COMPARE_LABEL``, ``RCL_TORCH_THREADS``). Research demo, not a medical device.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from rcl_hf.plots import plot_severity_matrix
from rcl_hf.space.batching import QUEUE_POLL_S, queue_demo, set_cpu_threads
from rcl_hf.space.certified import UNCERTIFIED_CHOICE, resolve_choice
from rcl_hf.space.admission import BUSY_MESSAGE, Admission, ServiceBusy
from rcl_hf.space.answer import OOD_MESSAGE, analyze, score
from rcl_hf.space.examples import examples_root, make_examples, model_input_side
from rcl_hf.space.loading import SpaceModel, as_space_model, load_space_model
from rcl_hf.space.startup import SpaceStartupError, check_port_free, resolve_model_ids
from rcl_hf.space.handlers import SpaceHandlers, uploaded_path
from rcl_hf.space.inputs import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, InputImageError, InputInfo, load_input_image
from rcl_hf.space.render import certificate_markdown

logger = logging.getLogger("rcl_hf.space")

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_MB", "InputImageError", "InputInfo", "SpaceModel", "SpaceStartupError",
           "analyze", "build_demo", "launch_demo", "load_input_image", "load_space_model", "main", "make_examples",
           "resolve_model_ids", "score", "OOD_MESSAGE", "BUSY_MESSAGE", "Admission", "ServiceBusy"]

_examples_root = examples_root  # the one folder served besides uploads (tests/test_security.py checks it)
DISCLAIMER = "Research demo of rcl_hf, **not a medical device**: do not use it for diagnosis."
#: Analyses run at once (decode, checks, then a shared forward pass), requests allowed to wait for one, and images one
#: forward pass may take: 8 and 4 is two forward threads (one torch thread each) taking up to 4 waiting images each,
#: which beat one thread taking up to 8 at 8 and 32 clients on 2 cores in every repeat of benchmarks/results/space_load.md;
#: workers + waiting stay within Gradio's 40 threads.
WORKERS, MAX_WAITING, MAX_BATCH_SIZE = 8, 32, 4
_HOW = """The model gives each image a probability for every class and weighs them by what each mistake would cost
a patient (calling a tumour "no tumour" is the worst). It decides the case itself only when the expected cost of
its decision is low enough; otherwise it refers the case to a specialist. How low is "low enough" was set on
held-out validation images so that at most the chosen share of patients with a critical condition is missed
(neither diagnosed correctly nor referred), with the confidence the certificate states — on images like the
validation images. An image that does not look like the training images gets no diagnosis: it is referred. Method: Risk-Calibrated Learning (arXiv:2604.12693)."""


def build_demo(
    model: Union[SpaceModel, Any],
    compare: Optional[Union[SpaceModel, Any]] = None,
    examples: Optional[Sequence[Union[str, Tuple[str, str]]]] = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    threshold: Optional[float] = None,
    workers: int = WORKERS,
    max_waiting: int = MAX_WAITING,
    max_batch_size: int = MAX_BATCH_SIZE,
):
    """The Space's ``gr.Blocks`` (``demo.rcl_admission``: the :class:`Admission` that bounds the work in flight;
    ``demo.rcl_handlers``: the :class:`~rcl_hf.space.handlers.SpaceHandlers` behind the events).

    The public API endpoint ``/analyze`` takes ``(image, risk)`` — ``risk`` the target share of critical cases
    missed, one of the offered values (``"10%"``) — and returns, per model, ``(probabilities, card_html,
    result_json)``, then the comparison markdown, the input description and the converted input. ``/analyze_batch``
    takes ``(files, risk)`` and returns a markdown table with the drift verdict. A bad input gets a ``gr.Error`` with one
    clear message; a blank or tiny image gets a "refer: image unusable" card; a full service
    :data:`BUSY_MESSAGE`. ``threshold``: the hand-set referral threshold of a model without a calibration.
    """
    import gradio as gr

    models = [as_space_model(model, "model")] + ([as_space_model(compare, "compare")] if compare is not None else [])
    if len(models) == 2 and models[0].name == models[1].name:
        models[1] = replace(models[1], name=models[1].name + " (compare)")
    handlers = SpaceHandlers(models, max_pixels=max_pixels, max_bytes=int(max_upload_mb * 1024 * 1024), threshold=threshold,
                             workers=workers, max_waiting=max_waiting, max_batch_size=max_batch_size)
    choices = list(models[0].calibrations) or [UNCERTIFIED_CHOICE]
    choice0 = resolve_choice(None, models[0].calibrations) or UNCERTIFIED_CHOICE

    expects = models[0].expects
    with gr.Blocks(title="rcl_hf: risk-aware classification", analytics_enabled=False) as demo:
        gr.Markdown(f"# Risk-aware medical image classification\n**This model expects {html.escape(expects)}.** "
                    "For each image it gives its decision, or asks you to **refer to a specialist** when it is not sure "
                    "enough, when the image is outside what it knows, or when the image is unusable.")
        gr.Markdown(DISCLAIMER)
        with gr.Tab("One image"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    image = gr.Image(label="Image (PNG, JPEG, BMP, TIFF, WebP)", type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], height=300, elem_id="rcl-input")
                    image.preprocess = handlers.preprocess_upload  # type: ignore[method-assign]
                    risk = gr.Radio(choices, value=choice0, interactive=models[0].certified, elem_id="rcl-risk",
                                    label="Target: at most this share of critical cases missed",
                                    info="A stricter target refers more cases to a specialist." if models[0].certified
                                    else "This model is not certified: a hand-set threshold decides referrals.")
                    certificate = gr.Markdown(certificate_markdown(models, resolve_choice(None, models[0].calibrations or {})),
                                              elem_id="rcl-certificate")
                    button = gr.Button("Analyze", variant="primary", elem_id="rcl-analyze")
                    if examples:
                        pairs = [(e, Path(e).stem) if isinstance(e, (str, os.PathLike)) else (str(e[0]), str(e[1])) for e in examples]
                        synthetic = all(c.startswith("synthetic") for _, c in pairs)
                        gr.Examples(examples=[[p] for p, _ in pairs], inputs=[image], example_labels=[c for _, c in pairs],
                                    label="Examples (synthetic, no patient data)" if synthetic else "Examples",
                                    examples_per_page=12)
                outputs: List[Any] = []
                for k, m in enumerate(models):
                    with gr.Column(scale=1, min_width=320):
                        gr.Markdown(f"### {html.escape(m.name)}")
                        card = gr.HTML(label=f"Answer ({m.name})", elem_id=f"rcl-decision-{k}")
                        with gr.Accordion("Details: probabilities and clinical costs", open=False):
                            label = gr.Label(num_top_classes=len(m.labels), label=f"Class probabilities ({m.name})",
                                             elem_id=f"rcl-probs-{k}")
                            gr.Plot(value=plot_severity_matrix(m.severity, title=f"Cost of each mistake ({m.name})"),
                                    format="png", label="Cost of each mistake", show_label=False)
                        raw = gr.JSON(label=f"Result JSON ({m.name})", visible=False)
                        outputs += [label, card, raw]
            summary = gr.Markdown(label="Side by side", elem_id="rcl-compare")
            with gr.Accordion("Details: the input as the model received it", open=False):
                input_info = gr.Markdown(label="Input", elem_id="rcl-input-info")
                preview = gr.Image(label="converted input", interactive=False, type="pil", format="jpeg", height=220)
        with gr.Tab("Batch"):
            gr.Markdown(f"Several images at once with **{html.escape(models[0].name)}**: from 20 images on, the page "
                        "also says whether the batch shows a shift that may break the certified guarantee.")
            files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="rcl-batch-files")
            batch_button = gr.Button("Analyze the batch", variant="primary", elem_id="rcl-batch-analyze")
            batch_out = gr.Markdown(elem_id="rcl-batch-result")
        with gr.Accordion("How the decision is made", open=False):
            gr.Markdown(_HOW)
        state = gr.State()
        all_outputs = [*outputs, summary, input_info, preview, state]

        def analyze_image(image: Any, risk: str):
            """Analyse one image: per model (probabilities, answer HTML, JSON), comparison, input info, converted input."""
            return handlers.run(image, risk)

        def analyze_images(files: Any, risk: str) -> str:
            """Analyse a batch of images with the first model: a table of answers and the drift verdict."""
            return handlers.run_batch(files, risk)

        button.click(analyze_image, [image, risk], all_outputs, api_name="analyze")
        image.change(lambda im, r: handlers.run(im, r, clear_on_empty=True), [image, risk], all_outputs, api_visibility="private")
        risk.change(handlers.rescore, [state, risk], [*outputs, summary, certificate], api_visibility="private")
        batch_button.click(analyze_images, [files, risk], [batch_out], api_name="analyze_batch")
    demo.rcl_admission, demo.rcl_handlers = handlers.admission, handlers
    return demo


_uploaded_path = uploaded_path  # the upload-folder check (tests/test_security.py calls it here)


def _host_port(host: Optional[str], port: Optional[int]) -> Tuple[str, int]:
    return host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1", int(port or os.environ.get("GRADIO_SERVER_PORT") or 7860)


def launch_demo(demo: Any, host: Optional[str] = None, port: Optional[int] = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                prevent_thread_lock: bool = False, quiet: bool = False, queue_poll_s: float = QUEUE_POLL_S):
    """Queue and launch ``demo`` (no share link, upload size capped); host/port default to
    ``$GRADIO_SERVER_NAME`` (else 127.0.0.1) and ``$GRADIO_SERVER_PORT`` (else 7860)."""
    host, port = _host_port(host, port)
    # Gradio hands every request to its handler at once (no concurrency limit of its own) on a thread of its own (one
    # for each admitted request, and spare ones for the other events): the handlers' Admission runs `workers`
    # analyses, lets `max_waiting` wait and answers the rest BUSY_MESSAGE at once. Gradio's queue bound is only a
    # backstop far beyond that, for bursts that arrive between two of its dispatch rounds (its "Queue is full" text
    # is not ours: at 4x the admitted count, 32 clients at once met it)
    admission = getattr(demo, "rcl_admission", None)
    admit = admission.workers + admission.max_waiting if admission is not None else 2
    queue_demo(demo, max_size=max(256, 4 * admit), poll_s=queue_poll_s)
    return demo.launch(server_name=host, server_port=port, share=False, max_file_size=int(max_upload_mb * 1024 * 1024),
                       prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False, footer_links=["api"],
                       allowed_paths=[str(examples_root())], ssr_mode=False, max_threads=max(40, admit + 8))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python spaces_demo/app.py",
        description="Risk-aware Gradio Space for rcl_hf classifiers (RCL_MODEL / RCL_COMPARE override --model / --compare).",
    )
    p.add_argument("--model", help="model folder saved by rcl_hf, or a Hub id (default: the shipped Brain-MRI model)")
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
    p.add_argument("--threshold", type=float, default=None,
                   help="hand-set referral threshold of a model without risk calibration (default 0.1)")
    p.add_argument("--workers", type=int, default=WORKERS, help=f"analyses run at once (default {WORKERS})")
    p.add_argument("--max_waiting", type=int, default=MAX_WAITING,
                   help=f"requests that may wait for a worker; beyond them the answer is 'busy' (default {MAX_WAITING})")
    p.add_argument("--max_batch_size", type=int, default=MAX_BATCH_SIZE,
                   help=f"images one forward pass may take from concurrent requests (default {MAX_BATCH_SIZE})")
    p.add_argument("--queue_poll_ms", type=float, default=QUEUE_POLL_S * 1000,
                   help=f"how often Gradio's idle queue looks for new events (default {QUEUE_POLL_S * 1000:.0f} ms; Gradio's: 1)")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted width*height")
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest accepted upload (MB)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("RCL_TORCH_THREADS") or 1),
                   help="torch and BLAS CPU threads per forward pass (default $RCL_TORCH_THREADS, else 1; see "
                        "benchmarks/space_latency.py)")
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
                          max_upload_mb=args.max_upload_mb, threshold=args.threshold,
                          workers=args.workers, max_waiting=args.max_waiting, max_batch_size=args.max_batch_size)
    except (SpaceStartupError, ValueError) as err:
        print(f"rcl_hf Space: cannot start: {err}", file=sys.stderr)
        return 2
    if args.threads and args.threads > 0:
        set_cpu_threads(args.threads)
    launch_demo(demo, host, port, max_upload_mb=args.max_upload_mb, queue_poll_s=args.queue_poll_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
