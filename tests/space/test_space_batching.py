"""The Space under concurrent requests: shared forward passes give each image its own answer.

* concurrent forward passes on one model keep their own embeddings (the OOD guard's input): before the fix the
  embedding hook of one request also caught the other requests' passes, and an image could get another image's
  OOD score;
* :class:`rcl_hf.space.batching.ForwardBatcher` runs waiting images as one batch, and each image's probabilities
  and OOD score equal those of a forward pass of that image alone;
* the page's handler, called from many threads at once with batching on, answers every image as one request at a
  time does (headline, decision, referral, OOD verdict, certificate); a full service still answers "busy";
* the OOD guard's score equals the textbook formula and converts its matrices once;
* the traced forward pass gives the eager numbers.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
import numpy as np
import pytest
from PIL import Image


def _images(n: int, side: int = 48):
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        yy, xx = np.mgrid[0:side, 0:side] / side
        base = 128 + 90 * np.sin(5 * xx + k) * np.cos(4 * yy - 0.5 * k) + rng.normal(0, 10, (side, side))
        out.append(Image.fromarray(np.clip(np.dstack([base, base * 0.8, 255 - base]), 0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny calibrated checkpoint with an OOD guard (threshold at the median score of the handler's images)."""
    import torch

    from rcl_hf.calibration import calibrate
    from rcl_hf.inference import forward_logits, load_model
    from rcl_hf.models import build_image_processor, build_model, ensure_label_maps_in_config_file
    from rcl_hf.ood import OODGuard
    from rcl_hf.severity import SeverityMatrix

    folder = tmp_path_factory.mktemp("batching") / "model"
    torch.manual_seed(0)
    sev = SeverityMatrix.preset("synthetic")
    model, data_config = build_model("hf-resnet", sev, image_size=32)
    model.save_pretrained(folder)
    build_image_processor(model, data_config).save_pretrained(folder)
    ensure_label_maps_in_config_file(str(folder))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    logits = 3.0 * np.eye(4)[y] + rng.normal(0, 1.5, (600, 4))
    calibrate(logits, y, sev, alpha=0.1, dataset="synthetic").save(folder)
    _, z = forward_logits(load_model(str(folder)), _images(12, side=64), embeddings=True)
    a = rng.normal(size=(z.shape[1], z.shape[1]))
    guard = OODGuard(means=z[:4] + rng.normal(0, 0.1, z[:4].shape), precision=a @ a.T / z.shape[1] + np.eye(z.shape[1]),
                     threshold=0.0, false_alarm_rate=0.05, meta={})
    guard.threshold = float(np.median(guard.score(z)))  # about half the images are "outside"
    guard.save(folder)
    return folder


@pytest.fixture(scope="module")
def space_model(folder):
    from rcl_hf.space.loading import load_space_model

    m = load_space_model(str(folder), "tiny")
    assert m.ood_guard is not None and m.certified
    return m


def test_concurrent_forward_passes_keep_their_own_embeddings(space_model):
    from rcl_hf.inference import forward_logits

    imgs = _images(6)
    ref = [forward_logits(space_model.model, [im], embeddings=True)[1] for im in imgs]
    start = threading.Barrier(len(imgs))
    wrong = []

    def go(k: int) -> None:
        start.wait()
        for _ in range(15):
            _, z = forward_logits(space_model.model, [imgs[k]], embeddings=True)
            if z.shape != ref[k].shape or not np.allclose(z, ref[k], rtol=1e-5, atol=1e-6):
                wrong.append((k, z.shape))

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(imgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_batched_forward_equals_one_image_at_a_time(space_model, folder):
    from rcl_hf.space.batching import ForwardBatcher
    from rcl_hf.space.answer import forward
    from rcl_hf.space.loading import load_space_model

    other = load_space_model(str(folder), "second")  # two models: one pass of each per batch
    imgs = _images(8)
    single = [[forward(m, im) for m in (space_model, other)] for im in imgs]
    batcher = ForwardBatcher([space_model, other], max_batch_size=4, threads=1)
    futs = []
    for im in imgs:  # queued before the forward thread starts: it must take them four at a time
        fut: Future = Future()
        batcher._queue.put((im, fut))
        futs.append(fut)
    batcher._start()
    got = [f.result(timeout=60) for f in futs]
    assert dict(batcher.batch_sizes) == {4: 2}
    with ThreadPoolExecutor(8) as pool:  # and through the public call, from many threads at once
        got_threads = list(pool.map(batcher, imgs))
    for answers in (got, got_threads):
        for per_image, ref in zip(answers, single):
            for (z, e), (z0, e0) in zip(per_image, ref):
                assert np.allclose(z, z0, atol=1e-5) and np.allclose(e, e0, rtol=1e-5, atol=1e-6)


def test_batcher_passes_an_error_to_every_caller_and_lives_on(space_model, monkeypatch):
    import rcl_hf.space.answer as answer
    from rcl_hf.space.batching import ForwardBatcher

    batcher = ForwardBatcher([space_model], max_batch_size=4)
    real = answer.forward_batch
    monkeypatch.setattr(answer, "forward_batch", lambda models, rgbs: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        batcher(_images(1)[0])
    monkeypatch.setattr(answer, "forward_batch", real)
    assert len(batcher(_images(1)[0])) == 1  # the forward thread survived


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("batching_images")
    paths = []
    for k, im in enumerate(_images(12, side=64)):
        paths.append(str(d / f"img{k}.png"))
        im.save(paths[-1])
    Image.new("RGB", (64, 64), (120, 120, 120)).save(d / "blank.png")  # refused before any model runs
    return paths + [str(d / "blank.png")]


_SAME = ("headline", "diagnosis", "decision", "refer", "reason_kind", "reason", "certified", "risk_target", "threshold",
         "certificate", "out_of_distribution")


def test_batched_handler_answers_as_one_request_at_a_time(space_model, image_files):
    pytest.importorskip("gradio")
    from space_app import load_space_app

    app = load_space_app()
    one = app.build_demo(space_model, workers=1, max_batch_size=1).rcl_handlers
    many = app.build_demo(space_model, workers=8, max_batch_size=4).rcl_handlers
    assert many.forward.max_batch_size == 4 and many.forward.threads == 2
    ref = [one.run(p, "10%") for p in image_files]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: many.run(p, "10%"), image_files * 2))
    assert sum(k * n for k, n in many.forward.batch_sizes.items()) == 2 * (len(image_files) - 1)  # the blank one: no pass
    ood = set()
    for out, exp in zip(got, ref * 2):
        rec, rec0 = out[2], exp[2]
        assert {k: rec.get(k) for k in _SAME} == {k: rec0.get(k) for k in _SAME}
        if rec.get("probabilities"):
            assert rec["probabilities"] == pytest.approx(rec0["probabilities"], abs=1e-6)
            ood.add(rec["out_of_distribution"])
        assert out[1] == exp[1]  # the card
        assert out[-3] == exp[-3]  # the input description
    assert ood == {True, False}  # both verdicts were exercised


def test_full_service_answers_busy_with_batching_on(space_model, image_files):
    gr = pytest.importorskip("gradio")
    from space_app import load_space_app

    handlers = load_space_app().build_demo(space_model, workers=1, max_waiting=0, max_batch_size=8).rcl_handlers
    with handlers.admission.slot():
        with pytest.raises(gr.Error, match="The service is busy"):
            handlers.run(image_files[0], "10%")
    assert handlers.run(image_files[0], "10%")[2]["certified"] is True


def test_ood_score_is_the_mahalanobis_formula_and_converts_once(space_model):
    from dataclasses import replace

    guard = space_model.ood_guard
    z = np.random.default_rng(1).normal(size=(5, guard.means.shape[1]))
    d = z[:, None, :] - guard.means[None].astype(np.float64)
    ref = np.einsum("nkd,de,nke->nk", d, guard.precision.astype(np.float64), d).min(1)
    assert np.allclose(guard.score(z), ref, rtol=1e-12)
    cached = guard._float64()[1]
    guard.score(z)
    assert guard._float64()[1] is cached and cached.dtype == np.float64
    other = replace(guard, precision=guard.precision * 2.0)  # new matrices: converted afresh
    assert np.allclose(other.score(z), 2 * ref, rtol=1e-12)


def test_traced_forward_gives_the_eager_numbers(space_model):
    """The Space traces its model once (rcl_hf.space.traced): same logits and embeddings as the eager
    forward_logits; an input of another shape than the traced one goes the eager way."""
    import torch

    from rcl_hf.inference import forward_logits
    from rcl_hf.space.answer import forward_batch

    assert space_model.traced is not None
    imgs = _images(5)
    got = forward_batch([space_model], imgs)
    z0, e0 = forward_logits(space_model.model, imgs, embeddings=True)
    for i in range(len(imgs)):
        assert np.allclose(got[i][0][0], z0[i], atol=1e-5) and np.allclose(got[i][0][1], e0[i], rtol=1e-5, atol=1e-6)
    assert space_model.traced.accepts(torch.zeros((2, *space_model.traced.input_shape)))
    assert not space_model.traced.accepts(torch.zeros((1, 3, 7, 7)))
