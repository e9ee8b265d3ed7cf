"""CPU latency of the Gradio Space's analyze path (EfficientNet-Lite0, 224 px).

Measures, after warm-up, over ``--repeats`` runs:

* ``analyze()`` end to end for one uploaded image (file read, decode, mode
  conversion, preprocessing, forward pass, risk summary) — the Space's per-image
  work; median and p90 in milliseconds;
* its parts: decode + conversion (:func:`load_input_image`), the image
  processor, the forward pass, the risk summary;
* batch throughput (images/s) of :func:`rcl_hf.inference.predict_proba` for
  ``--batch_sizes``;
* optionally (``--http``, on by default) the round trip through a running Space
  with ``gradio_client`` (upload + queue + analysis + response) on 127.0.0.1.

The model is built exactly as a user would: ``build_model("efficientnet_lite0",
..., image_size=224, pretrained="efficientnet-lite0-package")`` (offline ImageNet
weights), saved with its image processor, and loaded back through the Space's
:func:`load_space_model` (``rcl_hf.inference.load_model``).

Usage::

    python benchmarks/space_latency.py [--repeats 50] [--warmup 5] [--batch_sizes 1 8 32] [--no-http]

Writes ``benchmarks/results/space_latency.json`` and ``space_latency.md``
(machine, versions, command, figures). Target: median < 100 ms per image.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import shlex
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the benchmarks package
from benchmarks import machine_info, versions, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 100.0


def _load_app():
    spec = importlib.util.spec_from_file_location("rcl_space_app", ROOT / "spaces_demo" / "app.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _timeit(fn: Callable[[], Any], repeats: int, warmup: int) -> Tuple[List[float], List[float]]:
    """Wall-clock and process CPU milliseconds of each of ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t) * 1000.0)
        cpu.append((time.process_time() - c) * 1000.0)
    return wall, cpu


def _stats(timings: Tuple[Sequence[float], Sequence[float]]) -> Dict[str, float]:
    """Median / p90 / mean / min / max wall time, and the median process CPU time."""
    wall, cpu = timings
    arr = np.asarray(wall, dtype=np.float64)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "cpu_median_ms": float(np.median(np.asarray(cpu, dtype=np.float64))),
        "n": int(arr.size),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--image_size", type=int, default=224, help="model input side")
    parser.add_argument("--upload_side", type=int, default=224, help="side of the random uploaded image")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--http", dest="http", action="store_true", default=True)
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip the gradio_client round trip")
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from rcl_hf.inference import predict_proba
    from rcl_hf.models import build_image_processor, build_model, ensure_label_maps_in_config_file
    from rcl_hf.severity import SeverityMatrix

    if args.threads:
        torch.set_num_threads(args.threads)
    app = _load_app()
    severity = SeverityMatrix.preset("synthetic")
    work = Path(tempfile.mkdtemp(prefix="rcl_space_bench_"))
    model_dir = work / "efficientnet_lite0"
    t = time.perf_counter()
    model, data_config = build_model("efficientnet_lite0", severity, image_size=args.image_size, pretrained="efficientnet-lite0-package")
    processor = build_image_processor(model, data_config)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    ensure_label_maps_in_config_file(str(model_dir))
    space_model = app.load_space_model(str(model_dir), "EfficientNet-Lite0")
    setup_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in space_model.model.parameters())

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rng = np.random.default_rng(0)
    upload = work / "upload.png"
    Image.fromarray(rng.integers(0, 256, size=(args.upload_side, args.upload_side, 3), dtype=np.uint8)).save(upload)
    rgb, _ = app.load_input_image(str(upload))
    pixel_values = space_model.model.image_processor(images=[rgb], return_tensors="pt")["pixel_values"]
    probs = predict_proba(space_model.model, [rgb])[0]

    rows: Dict[str, Dict[str, float]] = {}
    rows["analyze() end to end, 1 image"] = _stats(_timeit(lambda: app.analyze(str(upload), 0.1, space_model), args.repeats, args.warmup))
    rows["  decode + convert (load_input_image)"] = _stats(_timeit(lambda: app.load_input_image(str(upload)), args.repeats, args.warmup))
    rows["  image processor"] = _stats(
        _timeit(lambda: space_model.model.image_processor(images=[rgb], return_tensors="pt"), args.repeats, args.warmup)
    )

    def forward() -> None:
        with torch.inference_mode():
            space_model.model(pixel_values=pixel_values)

    rows["  forward pass"] = _stats(_timeit(forward, args.repeats, args.warmup))
    rows["  risk summary (score)"] = _stats(_timeit(lambda: app.score(space_model, probs, 0.1), args.repeats, args.warmup))

    throughput: Dict[str, Dict[str, float]] = {}
    for bs in args.batch_sizes:
        batch = [
            Image.fromarray(rng.integers(0, 256, size=(args.upload_side, args.upload_side, 3), dtype=np.uint8))
            for _ in range(bs)
        ]
        reps = max(3, args.repeats // max(1, bs // 2))
        ms, _ = _timeit(lambda: predict_proba(space_model.model, batch, batch_size=bs), reps, max(1, args.warmup // 2))
        med = statistics.median(ms)
        throughput[str(bs)] = {"batch_median_ms": med, "ms_per_image": med / bs, "images_per_s": 1000.0 * bs / med, "n": len(ms)}

    http = None
    if args.http:
        from gradio_client import Client, handle_file

        demo = app.build_demo(space_model)
        port = _free_port()
        app.launch_demo(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            http = _stats(
                _timeit(lambda: client.predict(handle_file(str(upload)), 0.1, api_name="/analyze"), max(10, args.repeats // 2), 3)
            )
        finally:
            demo.close()

    end_to_end = rows["analyze() end to end, 1 image"]["median_ms"]
    result = {
        "benchmark": "space_latency",
        "command": (f"nice -n {os.nice(0)} " if hasattr(os, "nice") and os.nice(0) else "")
        + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            **machine_info(),
            "device": "cpu",
            "niceness": os.nice(0) if hasattr(os, "nice") else None,
            # 1-minute load average before/after: other processes on the machine inflate the figures
            "load_average_1min": {
                "before": round(load_before[0], 2) if load_before else None,
                "after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            },
        },
        "versions": versions(extra=("gradio", "gradio_client")),
        "model": {
            "backbone": "efficientnet_lite0 (timm via TimmWrapperForImageClassification)",
            "weights": "efficientnet-lite0-package (ImageNet, offline)",
            "image_size": args.image_size,
            "upload": f"random RGB PNG {args.upload_side}x{args.upload_side}",
            "parameters": int(n_params),
            "setup_s": round(setup_s, 2),
        },
        "per_image": rows,
        "batch_throughput": throughput,
        "http_round_trip": http,
        "target_ms": TARGET_MS,
        "meets_target": bool(end_to_end < TARGET_MS),
    }

    md = _markdown(result)
    write_result(result, Path(args.output_dir), markdown=md, name="space_latency")
    print(md)
    return result


def _markdown(r: Dict[str, Any]) -> str:
    lines = [
        "# Space latency: EfficientNet-Lite0, 224 px, CPU",
        "",
        f"- command: `{r['command']}`",
        f"- date: {r['date']}",
        f"- machine: {r['machine']['cpu']}, {r['machine']['logical_cpus']} logical CPUs, "
        f"torch threads {r['machine']['torch_threads']}, niceness {r['machine'].get('niceness')}, {r['machine']['platform']}; "
        f"1-min load average {r['machine']['load_average_1min']['before']} before, "
        f"{r['machine']['load_average_1min']['after']} after",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        f"- model: {r['model']['backbone']}, {r['model']['weights']}, {r['model']['parameters']:,} parameters; "
        f"upload: {r['model']['upload']}",
        "",
        "| per image | median ms | p90 ms | min ms | CPU ms (median) | n |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in r["per_image"].items():
        label = name.strip()
        label = f"&nbsp;&nbsp;{label}" if name.startswith("  ") else f"**{label}**"
        lines.append(f"| {label} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['min_ms']:.1f} | {s['cpu_median_ms']:.1f} | {s['n']} |")
    if r.get("http_round_trip"):
        s = r["http_round_trip"]
        lines.append(
            f"| HTTP round trip via gradio_client (upload + queue + analyze) | {s['median_ms']:.1f} | {s['p90_ms']:.1f} "
            f"| {s['min_ms']:.1f} | {s['cpu_median_ms']:.1f} (client + server) | {s['n']} |"
        )
    lines += ["", "| batch size | batch median ms | ms / image | images / s |", "|---:|---:|---:|---:|"]
    for bs, s in r["batch_throughput"].items():
        lines.append(f"| {bs} | {s['batch_median_ms']:.1f} | {s['ms_per_image']:.1f} | {s['images_per_s']:.1f} |")
    verdict = "meets" if r["meets_target"] else "MISSES"
    lines += ["", f"Target: median analyze() < {r['target_ms']:.0f} ms per image — {verdict} it "
              f"({r['per_image']['analyze() end to end, 1 image']['median_ms']:.1f} ms)."]
    load = r["machine"]["load_average_1min"]["before"]
    if load is not None and load > (r["machine"]["logical_cpus"] or 1):
        lines.append(
            f"The machine was busy (1-min load {load} on {r['machine']['logical_cpus']} CPUs): other processes "
            "inflate wall times; the min column and the CPU time are the better estimates of the cost itself."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
