"""Load test of the Gradio Space: 1, 8 and 32 concurrent clients on 127.0.0.1.

The Space (``spaces_demo/app.py``) runs in its own process, bound to the loopback address only, with
the model given by ``--model`` (default: an EfficientNet-Lite0 built like ``benchmarks/space_latency.py``).
Each client is a thread with its own ``gradio_client.Client`` that sends real-size images — JPEG
files from ``--images_dir`` when given, else synthetic 512x512 JPEGs — to ``/analyze`` back to back.
Every level is bounded: ``--requests`` requests per client count (at least two per client) and ``--max_seconds``.

Reported per level: requests, errors (any exception), busy answers (and how long they took), p50 / p95 latency,
throughput (requests / wall second), the server's resident memory (VmRSS) before and after, CPU per request of
the server and of the clients, the cores they kept busy, and the 1-minute load average. Also: the analysis
alone in-process (decode, check, forward, answer), so that the round trip's overhead beyond it shows.
``--configs`` measures several queue settings in one run, each with its own server.

Two things of the client shape the figures: gradio_client waits for the result by looking at its message queue
every 50 ms (``gradio_client.utils.stream_sse_v1plus``), so one client alone sees round trips in steps of ~50 ms
that a browser would not; and by default it builds a TLS context for each HTTP call (``--client_tls``).

Usage::

    python benchmarks/space_load.py [--model DIR] [--images_dir DIR] [--clients 1 8 32] [--requests 64]
                                    [--workers W] [--max_waiting M] [--max_batch_size B] [--configs W:B:M:P ...]

Writes ``benchmarks/results/space_load.json`` and ``space_load.md``. Goal: at 8 clients at least 3x the
one-client throughput, with p95 <= 2 s.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the benchmarks package
from benchmarks import machine_info, versions, write_result  # noqa: E402
from benchmarks.space_load_report import GOAL_P95_S, GOAL_SPEEDUP, at_level, config_name, goal_met, markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int, field: str = "VmRSS") -> Optional[float]:
    """Resident memory of process ``pid`` in MiB from ``/proc/PID/status`` (``VmHWM``: its peak so far)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _images(images_dir: Optional[str], n: int, work: Path) -> List[str]:
    from PIL import Image

    if images_dir:
        files = sorted(p for p in Path(images_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            step = max(1, len(files) // n)
            return [str(p) for p in files[::step][:n]]
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):  # smooth blobs plus noise: compresses like a photograph, not like white noise
        yy, xx = np.mgrid[0:512, 0:512] / 512.0
        base = 128 + 80 * np.sin(6 * xx + k) * np.cos(5 * yy - k) + rng.normal(0, 12, (512, 512))
        img = np.clip(np.dstack([base, base * 0.9, base * 0.8]), 0, 255).astype(np.uint8)
        path = work / f"synthetic_{k}.jpg"
        Image.fromarray(img).save(path, quality=90)
        out.append(str(path))
    return out


def _build_model(work: Path) -> str:
    from rcl_hf.models import build_image_processor, build_model, ensure_label_maps_in_config_file
    from rcl_hf.severity import SeverityMatrix

    model_dir = work / "efficientnet_lite0"
    model, data_config = build_model("efficientnet_lite0", SeverityMatrix.preset("synthetic"), image_size=224,
                                     pretrained="efficientnet-lite0-package")
    model.save_pretrained(model_dir)
    build_image_processor(model, data_config).save_pretrained(model_dir)
    ensure_label_maps_in_config_file(str(model_dir))
    return str(model_dir)


def _server_args(p: argparse.ArgumentParser) -> None:
    """The Space's queue settings, shared with benchmarks/space_profile.py."""
    p.add_argument("--workers", type=int, default=None, help="analyses at once (default: the Space's own)")
    p.add_argument("--max_waiting", type=int, default=None, help="requests that may wait (default: the Space's own)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per forward pass in the server")
    p.add_argument("--max_batch_size", type=int, default=None,
                   help="images one forward pass may take (default: the Space's own default; needs a Space that has it)")
    p.add_argument("--queue_poll_ms", type=float, default=None,
                   help="how often Gradio's idle queue looks for events (default: the Space's own; needs a Space that has it)")
    p.add_argument("--client_tls", choices=("shared", "per_call"), default="shared",
                   help="shared: every client reuses one ssl.SSLContext (ssl_verify=, httpx's verify=); per_call: gradio_client's "
                        "default, a new context (CA bundle loaded) for each of its 3 HTTP calls per request, ~55 ms of "
                        "client CPU per request on this machine although the URL is plain http")


def _client(url: str, args: argparse.Namespace):
    """One gradio_client.Client, as configured by ``--client_tls``."""
    import ssl

    from gradio_client import Client

    global _SSL_CONTEXT
    kwargs: Dict[str, Any] = {}
    if getattr(args, "client_tls", "per_call") == "shared":
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = ssl.create_default_context()
        kwargs["ssl_verify"] = _SSL_CONTEXT  # handed to httpx as verify=: a context is used as it is
    return Client(url, verbose=False, download_files=False, **kwargs)


_SSL_CONTEXT = None


def _start_server(model: str, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    root = Path(getattr(args, "space_root", None) or ROOT)  # another checkout: its own app.py and src/ only
    cmd = [sys.executable, str(root / "spaces_demo" / "app.py"), "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--threads", str(args.threads)]
    for name in ("workers", "max_waiting", "max_batch_size", "queue_poll_ms"):  # None: the Space's default
        if getattr(args, name, None) is not None:
            cmd += [f"--{name}", str(getattr(args, name))]
    path = [str(root / "src")] + ([os.environ.get("PYTHONPATH", "")] if root == ROOT else [])
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=space_env(path), cwd=root)
    wait_ready(proc, port, log, timeout_s=300)
    return proc


def space_env(pythonpath: Sequence[str], **extra: str) -> Dict[str, str]:
    """The environment a benchmarked Space process runs in: offline, no analytics, ``pythonpath`` first, and no
    ``RCL_MODEL`` / ``RCL_COMPARE`` from the caller's shell (they would override the models given); ``extra``
    variables on top."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join(pythonpath), **extra)
    env.pop("RCL_MODEL", None)
    env.pop("RCL_COMPARE", None)
    return env


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout_s: float = 300, poll_s: float = 0.5) -> None:
    """Return once the Space in ``proc`` answers ``/gradio_api/info`` on ``port``; raise when it exits first
    (with the end of its ``log``) or is not up within ``timeout_s`` (then it is killed)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Space exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    proc.kill()
    raise RuntimeError(f"the Space did not start within {timeout_s:.0f} s")


def _stop_server(proc: subprocess.Popen) -> None:
    """Terminate the Space server; kill it if it has not exited within 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _inputs(args: argparse.Namespace, prefix: str) -> Tuple[Path, str, List[str], Any]:
    """``(work folder, model folder, image files, risk sent)`` of a run: the model given or a freshly trained
    tiny one, 32 images, and the '10%' target when the model is calibrated."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    model = args.model or _build_model(work)
    images = _images(args.images_dir, 32, work)
    from rcl_hf.calibration import RiskCalibration

    risk = args.risk or ("10%" if RiskCalibration.load(model) is not None else "not certified")
    return work, model, images, risk


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _level(url: str, clients: int, per_client: int, images: Sequence[str], risk: Any, max_seconds: float,
           args: argparse.Namespace, server_pid: Optional[int] = None) -> Dict[str, Any]:
    from gradio_client import handle_file

    conns = [_client(url, args) for _ in range(clients)]
    lat: List[float] = []
    busy_lat: List[float] = []
    errors: List[str] = []
    busy = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(k: int) -> None:
        start.wait()
        for j in range(per_client):
            if time.monotonic() > deadline[0]:
                return
            img = images[(k * per_client + j) % len(images)]
            t = time.perf_counter()
            try:
                conns[k].predict(handle_file(img), risk, api_name="/analyze")
                with lock:
                    lat.append(time.perf_counter() - t)
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    if "busy" in str(err).lower():
                        busy[0] += 1
                        busy_lat.append(time.perf_counter() - t)
                    errors.append(f"{type(err).__name__}: {str(err)[:160]}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + max_seconds
    load0, cpu0 = os.getloadavg(), (_cpu_s(server_pid) if server_pid else float("nan"), _self_cpu_s())
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.perf_counter() - t0
    server_cpu = (_cpu_s(server_pid) if server_pid else float("nan")) - cpu0[0]
    client_cpu = _self_cpu_s() - cpu0[1]
    n = max(len(lat) + len(errors), 1)
    for c in conns:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass
    arr = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"clients": clients, "requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors), "busy": busy[0],
            "error_examples": errors[:3], "p50_s": float(np.percentile(arr, 50)), "p95_s": float(np.percentile(arr, 95)),
            "mean_s": float(arr.mean()), "wall_s": wall, "throughput_rps": len(lat) / wall if wall > 0 else float("nan"),
            "busy_answer_p95_s": float(np.percentile(busy_lat, 95)) if busy_lat else None,
            "server_cpu_ms_per_request": server_cpu / n * 1e3, "client_cpu_ms_per_request": client_cpu / n * 1e3,
            "cores_busy": (server_cpu + client_cpu) / wall if wall > 0 else float("nan"),
            "load_average_before": list(load0), "load_average_after": list(os.getloadavg())}


def _in_process(model: str, images: Sequence[str], risk: Any, n: int) -> Dict[str, float]:
    """The analysis alone (decode, usability check, forward, answer), in this process, one torch and BLAS thread."""
    import importlib.util

    try:  # one torch and one BLAS thread, as the Space sets them (--threads 1)
        from rcl_hf.space.batching import set_cpu_threads
    except ImportError:
        import torch

        set_cpu_threads = torch.set_num_threads
    set_cpu_threads(1)
    spec = importlib.util.spec_from_file_location("rcl_space_app", ROOT / "spaces_demo" / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    m = app.load_space_model(model, "model")
    for img in images[:3]:
        app.analyze(img, risk, m)
    times = []
    for k in range(n):
        t = time.perf_counter()
        app.analyze(images[k % len(images)], risk, m)
        times.append(time.perf_counter() - t)
    return {"median_ms": float(np.median(times) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3), "n": n}


def _run_config(model: str, images: Sequence[str], risk: Any, args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """Start the Space with the settings in ``args``, run every ``--clients`` level against it, stop it."""
    port = _free_port()
    proc = _start_server(model, port, args, work / f"server_{port}.log")
    url = f"http://127.0.0.1:{port}/"
    levels = []
    tag = config_name(vars(args))
    try:
        _level(url, 1, 3, images, risk, 60, args)  # warm-up
        rss0 = _rss_mb(proc.pid)
        for c in args.clients:
            rss_before = _rss_mb(proc.pid)
            res = _level(url, c, max(2, args.requests // c), images, risk, args.max_seconds, args, proc.pid)
            res.update(rss_before_mb=rss_before, rss_after_mb=_rss_mb(proc.pid))
            levels.append(res)
            print(f"[{tag}] {c:>3} clients: {res['ok']}/{res['requests']} ok, {res['errors']} errors ({res['busy']} busy), "
                  f"p50 {res['p50_s'] * 1e3:.0f} ms, p95 {res['p95_s'] * 1e3:.0f} ms, {res['throughput_rps']:.2f} req/s, "
                  f"RSS {res['rss_before_mb']:.0f} -> {res['rss_after_mb']:.0f} MB, CPU/request server "
                  f"{res['server_cpu_ms_per_request']:.0f} ms client {res['client_cpu_ms_per_request']:.0f} ms, "
                  f"load {res['load_average_after'][0]:.2f}", flush=True)
    finally:
        _stop_server(proc)
    base = next((lv for lv in levels if lv["clients"] == 1), None)
    at8 = next((lv for lv in levels if lv["clients"] == 8), None)
    return {"workers": args.workers, "max_batch_size": args.max_batch_size, "max_waiting": args.max_waiting,
            "queue_poll_ms": args.queue_poll_ms, "space_root": getattr(args, "space_root", None),
            "label": getattr(args, "label", None), "server_rss_start_mb": rss0, "levels": levels,
            "speedup_8_vs_1": _ratio(at8, base)}


def _ratio(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> Optional[float]:
    """Throughput of level ``a`` over that of level ``b`` (None when either is missing or ``b`` served nothing)."""
    return a["throughput_rps"] / b["throughput_rps"] if a and b and b["throughput_rps"] > 0 else None


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: a fresh EfficientNet-Lite0, synthetic labels)")
    p.add_argument("--images_dir", help="folder of JPEG/PNG files to send (default: synthetic 512x512 JPEGs)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=64, help="requests per level (at least 2 per client)")
    p.add_argument("--max_seconds", type=float, default=120, help="time bound of one level")
    _server_args(p)
    p.add_argument("--configs", nargs="+", metavar="W:B:M:P",
                   help="Space settings to compare, each measured at every --clients level with its own server: W "
                        "workers, B max_batch_size, M max_waiting, P queue_poll_ms (an empty or missing field: the option's "
                        "value, else the Space's default); the first one gives the main table (default: one server with "
                        "the options given); a setting listed several times is run that often, in the order given, "
                        "and the settings are compared by their median")
    p.add_argument("--baseline_root", help="a checkout of an earlier Space (its spaces_demo/app.py and src/), measured "
                   "last with its own defaults and the same clients: a before/after in one run")
    p.add_argument("--baseline_label", default="baseline", help="its name in the tables (e.g. the commit)")
    p.add_argument("--baseline_risk", default=None,
                   help="the second input sent to the baseline's /analyze when it differs from today's (e.g. 0.5 for a "
                        "Space whose second input was a referral threshold slider); default: the same as --risk")
    p.add_argument("--risk", default=None, help="target risk sent (default: '10%%' when the model is calibrated)")
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    work, model, images, risk = _inputs(args, "rcl_space_load_")
    load_before = os.getloadavg()
    configs = [{"workers": args.workers, "max_batch_size": args.max_batch_size, "max_waiting": args.max_waiting,
                "queue_poll_ms": args.queue_poll_ms}]
    if args.configs:  # "W:B:M:P", an empty field: the option's value (else the Space's default)
        configs = []
        for spec in args.configs:
            w, b, m, q = (spec.split(":") + ["", "", "", ""])[:4]
            configs.append({"workers": int(w) if w else args.workers, "max_batch_size": int(b) if b else args.max_batch_size,
                            "max_waiting": int(m) if m else args.max_waiting,
                            "queue_poll_ms": float(q) if q else args.queue_poll_ms})
    if args.baseline_root:  # an earlier Space, with its own defaults, in the same run
        configs.append({"workers": None, "max_batch_size": None, "max_waiting": None, "queue_poll_ms": None,
                        "space_root": str(Path(args.baseline_root).resolve()), "label": args.baseline_label})
    baseline_risk = _number_or_text(args.baseline_risk) if args.baseline_risk is not None else risk
    runs = [_run_config(model, images, baseline_risk if cfg.get("label") else risk,
                        argparse.Namespace(**{**vars(args), **cfg}), work) for cfg in configs]
    levels, rss0 = runs[0]["levels"], runs[0]["server_rss_start_mb"]
    alone = _in_process(model, images, risk, 30)
    base, at8 = at_level(levels, 1), at_level(levels, 8)
    speedup = _ratio(at8, base)
    before = at_level(runs[-1]["levels"], 1) if args.baseline_root else None
    vs_before = _ratio(at8, before)
    machine = machine_info()
    n_cpus = machine.get("logical_cpus") or os.cpu_count() or 1  # the count the page prints beside the ceiling
    ceiling = n_cpus / base["cores_busy"] if base and base.get("cores_busy") else None
    result = {
        "benchmark": "space_load", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/space_load.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine, "versions": versions(["gradio", "gradio_client"]),
        "model": model if args.model else "EfficientNet-Lite0 (synthetic labels, built on the fly)",
        "images": args.images_dir or "synthetic 512x512 JPEGs", "risk": risk,
        "queue": {**configs[0], "torch_threads": args.threads}, "client_tls": args.client_tls,
        "server_rss_start_mb": rss0, "levels": levels, "configs": runs, "analysis_in_process": alone,
        "speedup_8_vs_1": speedup, "speedup_ceiling_8_vs_1": ceiling,
        "speedup_8_vs_baseline_1": vs_before, "baseline_risk": baseline_risk if args.baseline_root else None,
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "goal": {"speedup": GOAL_SPEEDUP, "p95_s": GOAL_P95_S,
                 "met_vs_1_client": goal_met(speedup, at8), "met_vs_baseline_1_client": goal_met(vs_before, at8)},
    }
    md = markdown(result)
    write_result(result, Path(args.output_dir), markdown=md, name="space_load")
    print(md)
    return result


def _number_or_text(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


if __name__ == "__main__":
    main()
