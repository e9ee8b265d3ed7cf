"""Fuzz the two places that decode bytes from the outside: the shared image loader and the Space.

Seeded and bounded (< 30 s on CI's two cores).  Inputs:

* random byte strings, half of them behind a real magic number (PNG, JPEG, GIF, BMP,
  TIFF, WebP, ICO) so the decoders get past format detection;
* valid PNG / JPEG / BMP / GIF / TIFF / WebP files mutated by bit flips, byte overwrites,
  insertions, deletions, truncation and duplicated spans;
* random small images in every PIL mode (including zero-sized ones), both as PIL
  objects and encoded in a random format;
* random small numpy arrays (any number of dimensions, channels, dtypes, NaN/inf) for
  the Space, which accepts arrays.

Contract: :func:`rcl_hf.data.images.open_image_rgb` returns an ``RGB`` image or raises
:class:`~rcl_hf.data.images.ImageLoadError`; the Space's ``analyze`` returns finite
probabilities that sum to 1 or raises its :class:`InputImageError`; the function behind
the Space's ``Analyze`` button returns outputs or raises ``gr.Error`` with a user-facing
title — never "Internal error".  Anything else is a crash and fails the test.
The outcome counts are printed (``-s`` shows them).
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image
from space_app import load_space_app

ROOT = Path(__file__).resolve().parents[1]
SEED = int(__import__("os").environ.get("RCL_FUZZ_SEED", "20240607"))
MAX_PIXELS = 1_000_000  # a low cap keeps the fuzz fast; the caps themselves are tested in test_security.py
N_RANDOM_BYTES = 120
N_MUTATED = 160
N_PIL = 100
N_ARRAYS = 100

MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"GIF89a", b"GIF87a", b"BM", b"II*\x00",
         b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x01\x00"]
MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "I;16B", "I;16L", "LA", "PA",
         "RGBX", "RGBa", "La"]
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "ICO", "PPM"]


# =============================================================================== input generators
def _valid_files(rng: np.random.Generator) -> List[bytes]:
    out = []
    for fmt, mode in [("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"),
                      ("JPEG", "L"), ("JPEG", "CMYK"), ("BMP", "RGB"), ("GIF", "P"), ("TIFF", "RGB"), ("TIFF", "F"),
                      ("WEBP", "RGB")]:
        side = int(rng.integers(4, 48))
        img = _random_image(rng, mode, (side, int(rng.integers(4, 48))))
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        if not b:
            break
        op = int(rng.integers(0, 6))
        i = int(rng.integers(0, len(b)))
        if op == 0:  # bit flip
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:  # overwrite a byte (header fields: sizes, modes, lengths)
            b[i] = int(rng.integers(0, 256))
        elif op == 2:  # insert
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif op == 3:  # delete
            del b[i:i + int(rng.integers(1, 32))]
        elif op == 4:  # truncate
            del b[i:]
        else:  # duplicate a span
            j = min(len(b), i + int(rng.integers(1, 64)))
            b[j:j] = b[i:j]
    return bytes(b)


def _random_image(rng: np.random.Generator, mode: str, size: Tuple[int, int]) -> Image.Image:
    img = Image.new(mode, size)
    n = len(img.tobytes()) if size[0] and size[1] else 0
    if n:
        img = Image.frombytes(mode, size, rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    if mode in ("P", "PA"):
        img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        if rng.random() < 0.3:
            img.info["transparency"] = int(rng.integers(0, 256))
    return img


def _random_array(rng: np.random.Generator) -> np.ndarray:
    dtype = rng.choice(["bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64",
                        "complex64"])
    ndim = int(rng.choice([1, 2, 2, 3, 3, 3, 4]))
    shape = [int(rng.integers(0, 24)) if rng.random() < 0.1 else int(rng.integers(1, 40)) for _ in range(ndim)]
    if ndim == 3:
        shape[2] = int(rng.choice([1, 2, 3, 4, 5]))
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("float", "complex")):
        with np.errstate(over="ignore"):  # 1e30 overflows float16 to inf: wanted
            arr = (rng.normal(0, float(rng.choice([0.5, 1, 300, 1e30])), shape)).astype(dtype)
        if arr.size and rng.random() < 0.4:
            arr.flat[rng.integers(0, arr.size, max(1, arr.size // 10))] = rng.choice([np.nan, np.inf, -np.inf])
        return arr
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _inputs() -> List[Tuple[str, Any]]:
    """``(family, input)`` pairs, deterministic for :data:`SEED`."""
    rng = np.random.default_rng(SEED)
    items: List[Tuple[str, Any]] = []
    for k in range(N_RANDOM_BYTES):
        body = rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8).tobytes()
        items.append(("random_bytes", (MAGIC[k % len(MAGIC)] + body) if k % 2 else body))
    valid = _valid_files(rng)
    for k in range(N_MUTATED):
        items.append(("mutated_file", _mutate(valid[k % len(valid)], rng)))
    for _ in range(N_PIL):
        mode = str(rng.choice(MODES))
        size = (int(rng.integers(0, 3)) if rng.random() < 0.1 else int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        img = _random_image(rng, mode, size)
        items.append(("pil_image", img))
        buf = io.BytesIO()
        try:
            img.save(buf, format=str(rng.choice(FORMATS)))
            items.append(("encoded_image", buf.getvalue()))
        except (OSError, ValueError, KeyError, TypeError, SystemError, MemoryError):
            pass  # this format cannot hold this mode/size: nothing to feed
    for _ in range(N_ARRAYS):
        items.append(("array", _random_array(rng)))
    return items


# =============================================================================== targets


@pytest.fixture(scope="module")
def space(tiny_checkpoint):
    pytest.importorskip("gradio")

    app = load_space_app()
    space_model = app.load_space_model(str(tiny_checkpoint), "tiny")
    demo = app.build_demo(space_model, None, [], max_pixels=MAX_PIXELS, max_upload_mb=1.0)
    button = next(f for f in demo.fns.values() if getattr(f, "api_name", None) == "analyze")
    return app, space_model, button.fn


def _classify(fn: Callable[[], Any], documented: Tuple[type, ...], check: Callable[[Any], None]) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except documented as err:
        return f"refused:{getattr(err, 'kind', None) or type(err).__name__}"
    check(result)
    return "ok"


def test_fuzz_image_loader_and_space(space, tmp_path, monkeypatch):
    import gradio as gr

    from rcl_hf.data.images import ImageLoadError, open_image_rgb

    app, model, button = space
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # uploads the button may read live here
    upload = tmp_path / "upload"
    upload.mkdir()

    def rgb_ok(img):
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.width > 0 and img.height > 0, img

    def analysis_ok(res):
        p = np.array(list(res["models"][0]["probabilities"].values()))
        assert p.shape == (4,) and np.isfinite(p).all() and abs(p.sum() - 1) < 1e-4, res
        assert res["input"]["width"] > 0 and res["input"]["height"] > 0

    def button_ok(out):
        assert isinstance(out, tuple), out
        if out[2].get("reason_kind") == "unusable":  # a blank or tiny image: the refusal is the answer
            assert out[0] is None and "Image unusable" in out[1], out
        else:
            assert isinstance(out[0], dict) and len(out[0]) == 4, out

    def button_refusal(err: gr.Error) -> str:
        assert err.title != "Internal error", f"crash behind gr.Error: {err}"
        return err.title

    counts: Counter = Counter()
    crashes: List[str] = []
    t0 = time.perf_counter()
    for n, (family, item) in enumerate(_inputs()):
        calls: Dict[str, Callable[[], str]] = {}
        if family != "array":
            calls["loader"] = lambda: _classify(lambda: open_image_rgb(item, MAX_PIXELS), (ImageLoadError,), rgb_ok)
        calls["analyze"] = lambda: _classify(lambda: app.analyze(item, 0.1, model, max_pixels=MAX_PIXELS),
                                             (app.InputImageError,), analysis_ok)
        if isinstance(item, bytes) and n % 2 == 0:  # what the Analyze button gets: the path of an uploaded file
            path = upload / f"in{n}.bin"
            path.write_bytes(item)

            def press(path=path):
                try:
                    return _classify(lambda: button(str(path), 0.1), (), button_ok)
                except gr.Error as err:
                    return f"refused:{button_refusal(err)}"
            calls["button"] = press
        for target, call in calls.items():
            try:
                outcome = call()
            except AssertionError as err:
                crashes.append(f"{family}#{n} {target}: {str(err)[:200]}")
                outcome = "CRASH"
            except Exception as err:  # anything undocumented is a crash
                crashes.append(f"{family}#{n} {target}: {type(err).__name__}: {str(err)[:200]}")
                outcome = "CRASH"
            counts[(target, family, outcome if outcome in ("ok", "CRASH") else "refused")] += 1
            counts[(target, "refusal", outcome)] += outcome.startswith("refused")
    elapsed = time.perf_counter() - t0

    print(f"\nfuzz: {sum(v for (t, f, o), v in counts.items() if f != 'refusal')} calls in {elapsed:.1f} s (seed {SEED})")
    for target in ("loader", "analyze", "button"):
        rows = {f"{f}/{o}": v for (t, f, o), v in sorted(counts.items()) if t == target and f != "refusal"}
        kinds = {o.split(":", 1)[1]: v for (t, f, o), v in sorted(counts.items()) if t == target and f == "refusal" and v}
        print(f"  {target}: {rows}\n    refusals by kind: {kinds}")
    assert not crashes, "\n".join(crashes[:20])
    # the fuzz reached both outcomes for every target (it is not all-garbage or all-valid)
    for target in ("loader", "analyze", "button"):
        ok = sum(v for (t, f, o), v in counts.items() if t == target and o == "ok" and f != "refusal")
        refused = sum(v for (t, f, o), v in counts.items() if t == target and o == "refused")
        assert ok >= 5 and refused >= 5, (target, ok, refused)
    assert elapsed < 180  # a bound against hangs, not a timing test
