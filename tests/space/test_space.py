"""The Gradio Space (spaces_demo/app.py): served on 127.0.0.1, called with gradio_client and a real browser.

* the headline is the certified decision (a diagnosis, or "Refer to a specialist" with the reason), not
  the argmax; the target-risk control picks among the model's calibrations and changes the threshold and
  the coverage it buys; a model without calibration says "not certified"; blank and tiny images are refused
  with the reason before any model runs; a full service answers "busy" at once;
* bad or unusual inputs (not an image, empty, over the pixel cap, a
  decompression bomb, truncated, over the upload size, grayscale, RGBA, palette,
  16-bit, 32-bit float, CMYK) give a clear message or a result, never a crash;
* compare mode scores two models on the same image;
* start-up errors (missing folder, folder without a model, offline Hub id, no
  model at all) are one clear line and exit code 2;
* a headless Chromium loads the page, uploads an image and the screenshot shows
  the decision (``@pytest.mark.browser``; skipped without /usr/bin/chromium).
  Set ``RCL_SPACE_SCREENSHOT=path.png`` to keep a copy of the screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
import re
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
from PIL import Image
from space_app import APP_PATH, load_space_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RCL_CHROMIUM", "/usr/bin/chromium")
MAX_PIXELS = 1_000_000  # small caps so the "too large" paths are cheap to reach
MAX_UPLOAD_MB = 1.0

gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is needed to call the Space (pip install rcl_hf[demo])")
pytest.importorskip("gradio", reason="gradio is needed for the Space (pip install rcl_hf[demo])")


# ------------------------------------------------------------------------------ helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (a decompression bomb's shape)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


def _make_checkpoint(folder: Path, seed: int) -> Path:
    import torch

    from rcl_hf.models import build_image_processor, build_model, ensure_label_maps_in_config_file
    from rcl_hf.severity import SeverityMatrix

    torch.manual_seed(seed)
    model, data_config = build_model("hf-resnet", SeverityMatrix.preset("synthetic"), image_size=32)
    processor = build_image_processor(model, data_config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    ensure_label_maps_in_config_file(str(folder))
    return folder


def _calibrate_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Give a checkpoint the calibrations a trained Space model carries: the default one (α = 10%) and one per
    offered α, from made-up validation logits (4 classes, correct class +3, noise; 30% of the lesions lean to
    "normal", so that each target risk certifies a different threshold)."""
    from rcl_hf.calibration import calibrate
    from rcl_hf.severity import SeverityMatrix
    from rcl_hf.space.certified import save_alpha_calibrations

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 800)
    logits = 3.0 * np.eye(4)[y] + rng.normal(0, 1.0, (800, 4))
    hit = (y > 0) & (rng.random(800) < 0.3)
    logits[hit, 0] += rng.uniform(0, 8, hit.sum())
    np.savez_compressed(folder / "validation_predictions.npz", logits=logits, labels=y)
    sev = SeverityMatrix.preset("synthetic")
    calibrate(logits, y, sev, alpha=0.1, dataset="synthetic").save(folder)
    assert len(save_alpha_calibrations(str(folder), sev, dataset="synthetic")) == 3
    return folder


def _subprocess_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RCL_MODEL", "RCL_COMPARE")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def app(space_app):
    return space_app


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("space_ckpt")
    return {"ce": _make_checkpoint(root / "ce", 0), "rcl": _calibrate_checkpoint(_make_checkpoint(root / "rcl", 1))}


@pytest.fixture(scope="module")
def models(app, checkpoints):
    return {
        "ce": app.load_space_model(str(checkpoints["ce"]), "cross-entropy"),
        "rcl": app.load_space_model(str(checkpoints["rcl"]), "risk-calibrated"),
    }


@pytest.fixture(scope="module")
def examples(app, tmp_path_factory):
    return app.make_examples(image_size=64, per_class=1, cache_dir=tmp_path_factory.mktemp("space_examples"))


def _serve(app, demo):
    port = _free_port()
    app.launch_demo(demo, "127.0.0.1", port, max_upload_mb=MAX_UPLOAD_MB, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def single_url(app, models, examples):
    demo = app.build_demo(models["rcl"], examples=examples, max_pixels=MAX_PIXELS, max_upload_mb=MAX_UPLOAD_MB)
    url = _serve(app, demo)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def compare_url(app, models, examples):
    demo = app.build_demo(models["ce"], models["rcl"], examples=examples, max_pixels=MAX_PIXELS, max_upload_mb=MAX_UPLOAD_MB)
    url = _serve(app, demo)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(single_url):
    return gradio_client.Client(single_url, verbose=False)


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory):
    """One file per input case (written once)."""
    d = tmp_path_factory.mktemp("space_inputs")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    files = {
        "normal.png": _png_bytes(Image.fromarray(rgb)),
        "not_an_image.png": b"%PDF-1.4 definitely not pixels\n" * 4,
        "empty.png": b"",
        "over_pixel_cap.png": _png_header_only(1200, 1000),  # 1.2 MP > MAX_PIXELS, a few hundred bytes
        "bomb.png": _png_header_only(100_000, 100_000),
        "truncated.jpg": _png_bytes(Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)), "JPEG")[:1500],
        "over_upload_size.png": os.urandom(int(MAX_UPLOAD_MB * 1024 * 1024) + 4096),
        "grayscale.png": _png_bytes(Image.fromarray(rgb[..., 0])),
        "rgba.png": _png_bytes(Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (48, 64), dtype=np.uint8)]))),
        "palette.png": _png_bytes(Image.fromarray(rgb).convert("P")),
        "gray16.png": _png_bytes(Image.fromarray(rng.integers(0, 65536, size=(48, 64), dtype=np.uint16))),
        "float32.tiff": _png_bytes(Image.fromarray(rng.random((48, 64), dtype=np.float32) * 4000.0, mode="F"), "TIFF"),
        "cmyk.jpg": _png_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


# ------------------------------------------------------------------------------ the served app
def _record(out: tuple, k: int = 0) -> Dict[str, Any]:
    return out[3 * k + 2]


def test_normal_image_gives_the_certified_decision_first(client, inputs_dir, models):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(inputs_dir / "normal.png")), "10%", api_name="/analyze")
    label, card, rec = out[0], out[1], _record(out)
    labels = models["rcl"].labels
    assert {c["label"] for c in label["confidences"]} == set(labels)
    assert sum(rec["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert label["label"] == rec["argmax"] == max(rec["probabilities"], key=rec["probabilities"].get)
    cal = models["rcl"].calibrations["10%"]
    assert rec["certified"] is True and rec["risk_target"] == "10%" and rec["threshold"] == pytest.approx(cal.threshold)
    assert rec["refer"] == (rec["expected_cost"] > cal.threshold)
    assert rec["certificate"] == cal.certificate() and rec["certificate"] in card.replace("&#x27;", "'")
    if rec["refer"]:
        assert rec["headline"] == "Refer to a specialist" and rec["diagnosis"] is None and rec["reason_kind"] == "uncertain"
    else:
        assert rec["diagnosis"] == rec["decision"] and rec["headline"] in card
    head = card.index("rcl-headline")
    assert card.index(rec["headline"], head) < card.index("Most probable class")  # the argmax sits in the details
    assert "<details" in card and "64x48 px" in out[-2]  # input description
    for word in ("τ", "&tau;", "critical mass", "Critical mass", "OOD score", "Bayes", "PIL", "DOS"):
        assert word not in card, word


def test_headline_is_the_certified_decision_not_the_argmax(models):
    """A case where the certified rule (here the Bayes rule) and the argmax differ: the headline is the rule's."""
    from dataclasses import replace as dc_replace

    from rcl_hf.space.render import decision_card_html

    m = models["rcl"]
    bayes = {k: dc_replace(c, temperature=1.0, blend_weight=1.0, threshold=1.0) for k, c in m.calibrations.items()}
    sm = dc_replace(m, calibrations=bayes)
    logits = np.log([0.4, 0.2, 0.2, 0.2])  # argmax normal; calling a lesion normal is critical
    rec = _space_app().score(sm, logits, "10%")
    assert rec["argmax"] == "normal" and rec["decision"] == "lesion_round" != rec["argmax"]
    assert rec["headline"] == "round lesion" and rec["diagnosis"] == "lesion_round" and rec["refer"] is False
    card = decision_card_html(rec)
    assert card.index("round lesion") < card.index("Most probable class: normal")


def _space_app():
    return load_space_app()


def test_risk_control_changes_the_threshold_and_the_coverage(client, inputs_dir, models):
    from gradio_client import handle_file

    cals = models["rcl"].calibrations
    assert list(cals) == ["5%", "10%", "20%"]
    got = {r: _record(client.predict(handle_file(str(inputs_dir / "normal.png")), r, api_name="/analyze"))
           for r in ("5%", "20%")}
    assert got["5%"]["threshold"] == pytest.approx(cals["5%"].threshold)
    assert got["20%"]["threshold"] == pytest.approx(cals["20%"].threshold)
    assert cals["5%"].threshold < cals["20%"].threshold  # a stricter target refers more
    assert got["5%"]["coverage"] < got["20%"]["coverage"]
    assert "at most 5%" in got["5%"]["certificate"] and "at most 20%" in got["20%"]["certificate"]
    from rcl_hf.space.render import certificate_markdown

    text = {r: certificate_markdown([models["rcl"]], r) for r in ("5%", "20%")}
    assert f"Decides {cals['5%'].calibration['coverage']:.0%} of cases itself" in text["5%"] and "at most 5%" in text["5%"]
    assert f"Decides {cals['20%'].calibration['coverage']:.0%} of cases itself" in text["20%"] and "at most 20%" in text["20%"]
    with pytest.raises(gradio_client.exceptions.AppError):  # not one of the radio's values
        client.predict(handle_file(str(inputs_dir / "normal.png")), "42%", api_name="/analyze")
    with pytest.raises(ValueError, match="offers 5%, 10%, 20%"):
        _space_app().analyze(inputs_dir / "normal.png", 0.42, models["rcl"])


def test_model_without_calibration_says_not_certified(app, models, inputs_dir):
    res = app.analyze(inputs_dir / "normal.png", None, models["ce"])["models"][0]
    assert res["certified"] is False and res["risk_target"] == "not certified" and res["threshold"] == 0.1
    assert res["refer"] == (res["expected_cost"] > 0.1)
    from rcl_hf.space.render import certificate_markdown, decision_card_html

    assert "Not certified" in decision_card_html(res)
    text = certificate_markdown([models["ce"]], None)  # the decision layer's own sentences
    assert "Not certified" in text and "has no out-of-distribution guard" in text
    demo = app.build_demo(models["ce"])
    radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "rcl-risk")
    assert [c[0] for c in radio.choices] == ["not certified"] and radio.interactive is False


def test_blank_and_tiny_images_are_refused_with_the_reason(client, app, models, tmp_path):
    from gradio_client import handle_file

    grey, tiny = tmp_path / "grey.png", tmp_path / "tiny.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(grey)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tiny)
    for path, words in ((grey, "blank"), (tiny, "too small")):
        out = client.predict(handle_file(str(path)), "10%", api_name="/analyze")
        rec, card = _record(out), out[1]
        assert rec["reason_kind"] == "unusable" and rec["refer"] is True and rec["diagnosis"] is None
        assert words in rec["reason"] and "Image unusable" in card and "Refer to a specialist" in card and not out[0]
        with pytest.raises(app.InputImageError, match=words) as info:
            app.analyze(path, "10%", models["rcl"])
        assert info.value.kind == "unusable"
    forwards = []
    import rcl_hf.space.answer as answer

    orig = answer.forward
    answer.forward = lambda *a: forwards.append(a) or orig(*a)
    try:
        with pytest.raises(app.InputImageError):
            app.analyze(grey, "10%", models["rcl"])
    finally:
        answer.forward = orig
    assert forwards == []  # refused before the model ran


def test_busy_service_answers_at_once(app, models, inputs_dir):
    """With every worker and waiting place taken, a request gets the busy message, not a time-out."""
    from gradio_client import handle_file

    demo = app.build_demo(models["rcl"], workers=1, max_waiting=0)
    url = _serve(app, demo)
    try:
        c = gradio_client.Client(url, verbose=False)
        with demo.rcl_admission.slot():  # the one worker is busy
            # the busy answer itself (not a client time-out) is the behaviour under test
            with pytest.raises(gradio_client.exceptions.AppError, match="The service is busy — please try again in a minute"):
                c.predict(handle_file(str(inputs_dir / "normal.png")), "10%", api_name="/analyze")
        assert _record(c.predict(handle_file(str(inputs_dir / "normal.png")), "10%", api_name="/analyze"))["certified"]
    finally:
        demo.close()
    adm = app.Admission(workers=1, max_waiting=1)
    with adm.slot():  # one request running ...
        adm.in_flight += 1  # ... and one waiting for the worker
        with pytest.raises(app.ServiceBusy):
            with adm.slot():
                pass
        adm.in_flight -= 1
    assert adm.in_flight == 0


def test_batch_answers_each_image_and_says_when_it_drifts(app, models, inputs_dir, tmp_path):
    from rcl_hf.calibration import DriftReport
    from rcl_hf.space.answer import analyze_batch
    from rcl_hf.space.render import batch_markdown

    grey = tmp_path / "grey.png"
    Image.new("L", (64, 64), 90).save(grey)
    res = analyze_batch([inputs_dir / "normal.png", grey, inputs_dir / "rgba.png"], "10%", models["rcl"],
                        names=["a.png", "grey.png", "c.png"])
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["grey.png"]["reason_kind"] == "unusable" and "blank" in rows["grey.png"]["reason"]
    single = app.analyze(inputs_dir / "normal.png", "10%", models["rcl"])["models"][0]
    assert rows["a.png"]["headline"] == single["headline"]
    assert rows["a.png"]["expected_cost"] == pytest.approx(single["expected_cost"], abs=1e-6)
    text = batch_markdown(res)
    assert "Harmful shift not tested" in text and "grey.png" in text
    drifted = dict(res, drift=DriftReport(n=40, drifted=True, reasons=["30 of 40 images (75%) look unlike the training images"]))
    assert "**Warning: this batch of 40 images shows a shift that may break the certified guarantee" in batch_markdown(drifted)
    assert batch_markdown(drifted).split("\n")[0] == f"**{drifted['drift'].message()}**"  # the report's one sentence
    assert "No sign of a harmful shift" in batch_markdown(dict(res, drift=DriftReport(n=40, drifted=False)))


_CASES = {
    # file: ("error", words in the message) or ("ok", words in the input description)
    "not_an_image.png": ("error", "not an image"),
    "empty.png": ("error", "empty"),
    "over_pixel_cap.png": ("error", "too large"),
    "bomb.png": ("error", "decompression bomb"),
    "truncated.jpg": ("error", "truncated"),
    "over_upload_size.png": ("error", "maximum file size"),
    "grayscale.png": ("ok", "mode L"),
    "rgba.png": ("ok", "alpha channel dropped"),
    "palette.png": ("ok", "palette image"),
    "gray16.png": ("ok", "I;16"),
    "float32.tiff": ("ok", "rescaled"),
    "cmyk.jpg": ("ok", "CMYK image converted to RGB"),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_unusual_and_bad_inputs_get_a_result_or_a_clear_message(client, inputs_dir, name):
    from gradio_client import handle_file

    expect, words = _CASES[name]
    if expect == "error":
        with pytest.raises((gradio_client.exceptions.AppError, ValueError)) as info:
            client.predict(handle_file(str(inputs_dir / name)), "10%", api_name="/analyze")
        message = str(info.value)
        assert words.lower() in message.lower(), message
        assert "Traceback" not in message
    else:
        out = client.predict(handle_file(str(inputs_dir / name)), "10%", api_name="/analyze")
        assert words in out[-2], out[-2]
        assert sum(_record(out)["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_no_image_and_server_survives_bad_inputs(client, inputs_dir):
    from gradio_client import handle_file

    with pytest.raises(gradio_client.exceptions.AppError, match="No image received"):
        client.predict(None, "10%", api_name="/analyze")
    out = client.predict(handle_file(str(inputs_dir / "normal.png")), "10%", api_name="/analyze")
    assert _record(out)["argmax"]


def test_server_refuses_paths_that_were_not_uploaded(single_url):
    """A hand-made request naming a server file is rejected; the file is never read."""
    import httpx

    payload = {"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "10%"]}
    r = httpx.post(single_url + "gradio_api/call/analyze", json=payload, timeout=20)
    assert r.status_code == 200
    events = httpx.get(single_url + f"gradio_api/call/analyze/{r.json()['event_id']}", timeout=20).text
    assert "event: error" in events and "certif" not in events


def test_compare_mode_scores_both_models_on_the_same_image(compare_url, inputs_dir):
    from gradio_client import handle_file

    c = gradio_client.Client(compare_url, verbose=False)
    out = c.predict(handle_file(str(inputs_dir / "normal.png")), "not certified", api_name="/analyze")
    a, b = _record(out, 0), _record(out, 1)
    assert (a["model"], b["model"]) == ("cross-entropy", "risk-calibrated")
    assert a["probabilities"] != b["probabilities"]  # two different networks
    assert a["certified"] is False and b["certified"] is True  # the second model keeps its own (10%) calibration
    summary = out[6]
    assert "Side by side" in summary and "cross-entropy" in summary and "risk-calibrated" in summary
    assert "| certified | no | yes, 10% |" in summary


# ------------------------------------------------------------------------------ pure functions
def test_analyze_is_a_pure_function_of_image_and_risk(app, models, inputs_dir):
    from rcl_hf.inference import predict

    img = Image.open(inputs_dir / "normal.png").convert("RGB")
    res = app.analyze(img, "10%", models["rcl"], models["ce"])
    assert [m["model"] for m in res["models"]] == ["risk-calibrated", "cross-entropy"]
    ref = predict(models["rcl"].model, [img]).as_records()[0]  # the folder's default calibration is the 10% one
    got = res["models"][0]
    for key in ("argmax", "decision", "certified"):
        assert got[key] == ref[key]
    assert got["refer"] == ref["refer"]  # no OOD guard here
    assert got["expected_cost"] == pytest.approx(ref["expected_cost"], abs=1e-6)
    # raw bytes, a numpy array and the same PNG file agree
    from_bytes = app.analyze((inputs_dir / "normal.png").read_bytes(), 0.1, models["rcl"])
    from_array = app.analyze(np.asarray(img), "10%", models["rcl"])
    for other in (from_bytes, from_array):
        assert other["models"][0]["probabilities"] == pytest.approx(got["probabilities"], abs=1e-6)
    with pytest.raises(ValueError, match="threshold"):
        app.analyze(img, None, models["ce"], threshold=float("nan"))


def test_load_input_image_modes_and_caps(app):
    rng = np.random.default_rng(1)
    for mode_img, note in [
        (Image.fromarray(rng.integers(0, 256, (8, 9, 2), dtype=np.uint8), mode="LA"), "alpha"),
        (Image.fromarray(rng.integers(0, 2, (8, 9)).astype(bool)), "converted"),
        (Image.fromarray(rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)).convert("CMYK"), "CMYK"),
        (Image.fromarray(rng.integers(-900, 900, (8, 9)).astype(np.int32), mode="I"), "rescaled"),  # the loaders' note
    ]:
        rgb, info = app.load_input_image(_png_bytes(mode_img, "TIFF"))
        assert rgb.mode == "RGB" and rgb.size == (9, 8)
        assert any(note in n for n in info.notes), info.notes
    # 16-bit values inside [0, 255] are kept as they are (the loaders' rule)
    low = np.arange(72, dtype=np.uint16).reshape(8, 9)
    rgb, _ = app.load_input_image(_png_bytes(Image.fromarray(low)))
    assert np.array_equal(np.asarray(rgb)[..., 0], low.astype(np.uint8))
    with pytest.raises(app.InputImageError) as err:
        app.load_input_image(_png_header_only(5000, 5000), max_pixels=MAX_PIXELS)
    assert err.value.kind == "too_large" and "25000000 pixels" in str(err.value)
    with pytest.raises(app.InputImageError, match="above the limit"):
        app.load_input_image(b"\x89PNG" + b"0" * 2048, max_bytes=1024)
    with pytest.raises(app.InputImageError, match="No image received"):
        app.load_input_image(None)
    big = Image.fromarray(rng.integers(0, 256, (600, 1500, 3), dtype=np.uint8))
    rgb, info = app.load_input_image(_png_bytes(big, "JPEG"), working_side=500)
    assert max(rgb.size) == 500 and (info.width, info.height) == (1500, 600)


def test_alpha_modes_without_a_direct_rgb_conversion_and_parser_errors(app, monkeypatch):
    """Premultiplied / palette-alpha modes convert; any exception from PIL's parsers is a clear refusal."""
    for mode in ("La", "RGBa", "PA"):
        rgb, info = app.load_input_image(Image.new(mode, (5, 4)))
        assert rgb.mode == "RGB" and rgb.size == (5, 4) and info.notes, mode

    def broken_open(*args, **kwargs):
        raise TypeError("Missing dimensions")  # what a malformed TIFF header raises from n_frames

    monkeypatch.setattr(Image, "open", broken_open)
    with pytest.raises(app.InputImageError, match="not a readable image .TypeError: Missing dimensions") as err:
        app.load_input_image(b"II*\x00garbage")
    assert err.value.kind == "not_image"


def test_uploaded_path_is_confined_to_gradios_upload_folder(app):
    with pytest.raises(app.InputImageError, match="not uploaded"):
        app._uploaded_path("/etc/hostname")


def test_severity_heatmap_marks_every_critical_cell(models):
    """The Space shows the package's heat map (rcl_hf.plots): every critical cell marked and outlined."""
    from matplotlib.patches import Rectangle

    from rcl_hf.plots import plot_severity_matrix

    sev = models["rcl"].severity
    fig = plot_severity_matrix(sev)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(t.endswith("!") for t in texts) == int(sev.critical.sum()) == 3
    assert sum(isinstance(p, Rectangle) for p in fig.axes[0].patches) == 3
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == sev.labels


def test_examples_are_generated_or_taken_from_a_folder(app, examples, tmp_path):
    from rcl_hf.data.synthetic import SYNTHETIC_LABELS

    assert [c for _, c in examples] == [f"synthetic {label.replace('_', ' ')} 1" for label in SYNTHETIC_LABELS]
    for path, _ in examples:
        with Image.open(path) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    user = tmp_path / "mine"
    user.mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint16) + 40000).save(user / "a16.png")
    (user / "broken.jpg").write_bytes(b"nope")
    (user / "notes.txt").write_text("ignored")
    got = app.make_examples(str(user), cache_dir=tmp_path / "cache")
    assert [c for _, c in got] == ["a16"]
    assert Path(got[0][0]).parent.parent == tmp_path / "cache"
    with pytest.raises(app.SpaceStartupError, match="not a folder"):
        app.make_examples(str(tmp_path / "absent"), cache_dir=tmp_path / "cache")


def test_model_choice_env_overrides_cli_and_nothing_named_serves_the_shipped_brain_mri_model(app, tmp_path):
    from rcl_hf.space.startup import DEFAULT_MODEL_ID

    assert app.resolve_model_ids("cli/a", None, environ={}) == ("cli/a", None)
    assert app.resolve_model_ids("cli/a", "cli/b", environ={"RCL_MODEL": "env/m"}) == ("env/m", "cli/b")
    assert app.resolve_model_ids(None, None, environ={"RCL_MODEL": "env/m", "RCL_COMPARE": "env/c"}) == ("env/m", "env/c")
    # nothing named: the checkout's models/ folder of the default id, else the id (resolved through the HF cache)
    assert app.resolve_model_ids(None, None, environ={}, models_dir=tmp_path) == (DEFAULT_MODEL_ID, None)
    shipped = tmp_path / DEFAULT_MODEL_ID.split("/")[1]
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    assert app.resolve_model_ids(None, None, environ={}, models_dir=tmp_path) == (str(shipped), None)


def test_startup_errors_are_one_clear_line(app, tmp_path, capsys, monkeypatch):
    """In-process: a port outside the range, and a folder that holds no model (both exit 2)."""
    monkeypatch.delenv("RCL_MODEL", raising=False)
    assert app.main(["--port", "70000"]) == 2
    assert "Port 70000 is outside" in capsys.readouterr().err
    (tmp_path / "not_a_model").mkdir()
    assert app.main(["--model", str(tmp_path / "not_a_model")]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_cli_missing_model_folder_exits_with_a_message(tmp_path):
    """The real command line, as a user runs it: a clear line on stderr, exit code 2, no traceback."""
    missing = tmp_path / "no_such_model"
    proc = subprocess.run(
        [sys.executable, str(APP_PATH), "--model", str(missing), "--port", str(_free_port())],
        capture_output=True, text=True, env=_subprocess_env(), cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"Model folder {str(missing)!r} does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_busy_port_is_one_line_before_any_model_loads(app, tmp_path, capsys, monkeypatch):
    """A busy port once gave a gradio traceback after the models loaded; now one line, exit 2, nothing loaded."""
    monkeypatch.delenv("RCL_MODEL", raising=False)
    loaded = []
    monkeypatch.setattr(app, "load_space_model", lambda *a, **k: loaded.append(a))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert app.main(["--model", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"Port {port} on 127.0.0.1 is not free" in err and "--port" in err and "Traceback" not in err
    assert loaded == []


def test_offline_hub_id_is_a_clear_startup_error(app, capsys, monkeypatch):
    """An id that is in no local cache, with the Hub offline: one actionable line, exit code 2."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; set for this test
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RCL_MODEL", raising=False)
    assert app.main(["--model", "rcl-hf-tests/no-such-model-in-any-cache"]) == 2
    err = capsys.readouterr().err
    assert "not in the local Hugging Face cache" in err and "hf download" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ real browser
class _CDP:
    """A minimal Chrome DevTools Protocol client over aiohttp's websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> Dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


_WAIT_DECISION = ("(() => { const h = document.querySelector('#rcl-decision-1 .rcl-headline');"
                  " return h && h.innerText.length > 2 ? document.querySelector('#rcl-decision-1 .rcl-card').innerText : ''; })()")
_WAIT_ANY_CARD = ("(() => { const c = document.querySelector('#rcl-decision-0 .rcl-card');"
                  " return c && c.innerText.length > 20 ? c.innerText : ''; })()")
#: Banner colours of rcl_hf.space.render: a decision (blue), a referral (red), outside the model's domain (purple).
_DECIDE_RGB, _REFER_RGB, _OUTSIDE_RGB = (11, 79, 138), (180, 35, 24), (110, 64, 201)


async def _browser_session(url: str, upload: str, devtools_port: int, wait: str = _WAIT_DECISION) -> Dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as r:
            pages = [t for t in await r.json() if t.get("type") == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = _CDP(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.navigate", url=url)
            await cdp.wait_for("!!document.querySelector('#rcl-input input[type=file]')", 30, "the upload widget")
            doc = await cdp.call("DOM.getDocument", depth=-1, pierce=True)
            node = await cdp.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#rcl-input input[type=file]")
            await cdp.call("DOM.setFileInputFiles", files=[upload], nodeId=node["nodeId"])
            text = await cdp.wait_for(wait, 90, "the decision panels")
            await asyncio.sleep(0.8)  # let the bars' transitions settle before the picture
            page_text = await cdp.evaluate("document.body.innerText")
            shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            return {"card": text, "page": page_text, "png": base64.b64decode(shot["data"])}


def _in_chromium(url: str, upload: str, tmp_path: Path, wait: str = _WAIT_DECISION) -> Dict[str, Any]:
    """Headless Chromium (the flags below) opens ``url``, uploads ``upload``, waits for ``wait``; returns text + PNG."""
    pytest.importorskip("aiohttp", reason="aiohttp (installed with datasets) drives Chromium over CDP")
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--window-size=1400,1200", "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"Chromium exited with {proc.returncode}: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("Chromium did not open its DevTools port within 30 s")
            time.sleep(0.1)
        devtools_port = int(port_file.read_text().split()[0])
        return asyncio.run(_browser_session(url, upload, devtools_port, wait))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _banner_pixels(png: bytes, colour: tuple) -> int:
    with Image.open(io.BytesIO(png)) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    return int((np.abs(px - np.array(colour)).sum(-1) <= 6).sum())


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"headless Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")
def test_browser_uploads_an_image_and_the_screenshot_shows_the_decision(compare_url, inputs_dir, tmp_path):
    got = _in_chromium(compare_url, str(inputs_dir / "normal.png"), tmp_path)
    card, page = got["card"], got["page"]
    refer = "refer to a specialist" in card.lower()  # the headline is styled text-transform: capitalize
    assert refer or "the model's decision" in card.lower()
    assert "Certified" in card and "Not certified" in page  # the RCL model is calibrated, the CE one is not
    assert "This model expects" in page and "Side by side" in page and "cross-entropy" in page
    for word in ("τ", "Critical mass", "OOD score", "Bayes", "PIL"):
        assert word not in page, word
    shot_path = tmp_path / "space_screenshot.png"
    shot_path.write_bytes(got["png"])
    with Image.open(shot_path) as im:
        assert im.width >= 1000 and im.height >= 800
        px = np.asarray(im.convert("RGB")).astype(int)
    hits = _banner_pixels(got["png"], _REFER_RGB if refer else _DECIDE_RGB)
    assert hits > 2000, f"banner colour found on only {hits} pixels"
    assert len(np.unique(px.reshape(-1, 3)[::97], axis=0)) > 50  # a rendered page, not a blank one
    keep = os.environ.get("RCL_SPACE_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot_path, keep)


# ------------------------------------------------------------------------------ real data, real browser
DATA = Path(os.environ.get("RCL_DATA_ROOT", "/work/shared/data"))


@pytest.mark.realdata
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"headless Chromium not found at {CHROMIUM}")
@pytest.mark.skipif(not (DATA / "brain_tumor_mri").is_dir() or not (DATA / "isic2018_task3").is_dir(),
                    reason=f"Brain Tumor MRI and ISIC 2018 not found under {DATA}")
def test_real_brain_mri_space_diagnoses_mri_and_refers_isic(app, tmp_path):
    """The one-command real pair (frozen EfficientNet-Lite0, CE + RCL, OOD guard, calibrations at 5/10/20%): an MRI
    gets an answer, an ISIC photo the "outside" referral, a uniform grey image the "unusable" referral, through the
    API and in Chromium. RCL_SPACE_SCREENSHOT_DIR keeps the PNGs."""
    from gradio_client import handle_file

    from rcl_hf.data import load_dataset
    from rcl_hf.space.certified import pretty_label
    from rcl_hf.space.train import train_space_pair

    pair = train_space_pair("brain_tumor_mri", str(DATA / "brain_tumor_mri"),
                            os.environ.get("RCL_OOD_RUN_DIR") or str(tmp_path / "space"))
    rcl = app.load_space_model(pair["rcl"], "RCL (brain_tumor_mri)")
    ce = app.load_space_model(pair["ce"], "cross-entropy (brain_tumor_mri)")
    assert rcl.ood_guard is not None and app.make_examples(labels=rcl.labels) == []  # no other domain's examples
    assert list(rcl.calibrations) == ["5%", "10%", "20%"] and rcl.expects.startswith("brain MRI slices (glioma")
    mri = load_dataset("brain_tumor_mri", str(DATA / "brain_tumor_mri"))["validation"]
    import datasets

    glioma = int(np.flatnonzero(np.asarray(mri["label"]) == mri.features["label"].names.index("glioma"))[0])
    row = mri.cast_column("image", datasets.Image(decode=False))[glioma]["image"]
    mri_path = row.get("path") or ""
    if not os.path.isfile(mri_path):  # image stored as bytes: hand the Space a file
        mri_path = str(tmp_path / "mri.png")
        Path(mri_path).write_bytes(row["bytes"])
    isic = sorted((DATA / "isic2018_task3" / "ISIC2018_Task3_Training_Input").glob("*.jpg"))[0]
    grey = tmp_path / "grey.png"
    Image.new("RGB", (512, 512), (128, 128, 128)).save(grey)
    demo = app.build_demo(rcl, ce)
    url = _serve(app, demo)
    try:
        c = gradio_client.Client(url, verbose=False)
        on = c.predict(handle_file(mri_path), "10%", api_name="/analyze")
        off = c.predict(handle_file(str(isic)), "10%", api_name="/analyze")
        blank = c.predict(handle_file(str(grey)), "10%", api_name="/analyze")
        for k in (0, 1):
            assert _record(on, k)["out_of_distribution"] is False and _record(on, k)["certified"] is True
            assert _record(on, k)["headline"] in ("Refer to a specialist", *[pretty_label(x) for x in rcl.labels])
            assert _record(off, k)["out_of_distribution"] is True and _record(off, k)["diagnosis"] is None
            assert _record(blank, k)["reason_kind"] == "unusable"
        assert app.OOD_MESSAGE in off[1] and "Most probable class" in on[1]
        shots = {"in_domain": _in_chromium(url, mri_path, tmp_path),
                 "out_of_domain": _in_chromium(url, str(isic), tmp_path, wait=_WAIT_ANY_CARD),
                 "blank_image": _in_chromium(url, str(grey), tmp_path, wait=_WAIT_ANY_CARD)}
    finally:
        demo.close()
    assert "Certified" in shots["in_domain"]["card"] and "brain MRI slices" in shots["in_domain"]["page"]
    assert app.OOD_MESSAGE in shots["out_of_domain"]["card"] and "Most probable class" not in shots["out_of_domain"]["page"]
    assert _banner_pixels(shots["out_of_domain"]["png"], _OUTSIDE_RGB) > 2000  # the purple "outside" banner
    assert "Image unusable" in shots["blank_image"]["card"] and _banner_pixels(shots["blank_image"]["png"], _REFER_RGB) > 2000
    keep = os.environ.get("RCL_SPACE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for name, got in shots.items():
            (Path(keep) / f"space_brain_mri_{name}.png").write_bytes(got["png"])


def test_the_space_readme_names_every_control_of_the_page(app, models):
    """spaces_demo/README.md's "The page" names, in bold quotes, exactly the tabs, buttons, uploads, choices and
    collapsible sections the app builds (their labels as shown): a control added, renamed or removed without the
    README, or a README naming one the page no longer has (the old τ slider), fails here."""
    import gradio as gr

    demo = app.build_demo(models["ce"], models["rcl"])
    shown = set()
    for block in demo.blocks.values():
        if isinstance(block, (gr.Tab, gr.Accordion, gr.Radio, gr.File, gr.Slider)):
            shown.add(block.label)
        elif isinstance(block, gr.Button):
            shown.add(block.value)
        elif isinstance(block, gr.Image) and block.interactive is not False:
            shown.add(block.label)
    demo.close()
    text = (ROOT / "spaces_demo" / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The page"):text.index("\n## ", text.index("## The page") + 5)]
    named = set(re.findall(r'\*\*"([^"]+)"\*\*', section))
    assert named == shown, f"in the app, not the README: {sorted(shown - named)}; in the README, not the app: {sorted(named - shown)}"
