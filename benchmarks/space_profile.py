"""Where one Space request spends its CPU: the server (sampled with py-spy), the client, and the handler (cProfile).

One ``gradio_client`` client sends ``--requests`` real images to ``/analyze`` one at a time, as
``benchmarks/space_load.py`` does at one client (same server command, same client options). Measured:

* CPU per request of the server process (``/proc/PID/stat``) and of the client (this process, ``getrusage``);
* with py-spy (``--py_spy PATH``, else found on ``PATH``; ``pip install py-spy``), samples of every thread of the
  server and of this process, grouped into stages (model forward, OOD guard, image decode, rendering, Gradio
  pre/post-processing, upload, queue/HTTP, ...): milliseconds of CPU per request, and the top functions by own time;
* in this process, ``cProfile`` around the ``/analyze`` handler alone (decode, checks, forward, scoring, HTML),
  called ``--requests`` times: its top entries by cumulative time.

Usage::

    python benchmarks/space_profile.py --model DIR --images_dir DIR [--requests 60] [--baseline OLD_JSON]

Writes ``benchmarks/results/space_profile.json`` and ``space_profile.md`` (``--baseline``: a previous
``space_profile.json`` whose per-stage figures are shown beside this run's).
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import contextlib
import datetime as _dt
import io
import json
import os
import pstats
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the benchmarks package
from benchmarks import machine_info, versions, write_result  # noqa: E402
from benchmarks.space_load import (ROOT, _client, _cpu_s, _free_port, _inputs,  # noqa: E402
                                   _self_cpu_s, _server_args, _start_server, _stop_server)

#: Stages of a server stack, first match wins (a frame containing any of the strings). Idle waits are dropped.
SERVER_STAGES: Sequence[Tuple[str, Sequence[str]]] = (
    ("image processor (resize, normalise)", ("image_processing", "image_transforms", "image_utils.py")),
    ("model forward (torch)", ("torch/nn/modules", "timm/", "modeling_timm_wrapper", "torch/_ops")),
    ("OOD guard score", ("OODGuard.score",)),
    ("image decode + downscale", ("load_input_image", "open_image_rgb")),
    ("usability check (blank/tiny)", ("check_usable",)),
    ("scoring (DecisionLayer.apply, score)", ("apply (rcl_hf/decision_layer.py", "score (rcl_hf/space/answer.py", "model_outputs")),
    ("rendering (HTML, markdown)", ("rcl_hf/space/render.py",)),
    ("forward glue (softmax, tensor copies, batch queue)", ("rcl_hf/space/batching.py", "_probs_and_embeddings")),
    ("Gradio postprocess (Image file, Label, JSON)", ("postprocess_data", "postprocess_update_dict")),
    ("Gradio preprocess", ("preprocess_data",)),
    ("upload route (multipart, file write)", ("upload_file", "multipart", "GradioUploadFile", "upload (gradio/routes")),
    ("rest of the handler (preview, state)", ("spaces_demo/app.py", "rcl_hf/space/")),
    ("Gradio queue, SSE, HTTP, event loop", ("gradio/", "starlette", "uvicorn", "h11", "fastapi", "anyio", "asyncio",
                                            "httptools", "pydantic", "orjson")),
)
CLIENT_STAGES: Sequence[Tuple[str, Sequence[str]]] = (
    ("a new TLS context per HTTP call (ssl.create_default_context)", ("create_default_context", "load_verify_locations",
                                                                      "SSLContext.__new__", "set_default_verify_paths")),
    ("upload (POST /upload)", ("_upload_file",)),
    ("join the queue (POST /queue/join)", ("send_data",)),
    ("SSE stream of the result", ("stream_messages", "stream_sse")),
    ("rest of gradio_client, httpx", ("gradio_client", "httpx", "httpcore", "h11")),
)
_IDLE_LEAVES = ("select (selectors.py", "Condition.wait", "Event.wait", "Queue.get (queue.py", "sleep", "_worker (concurrent",
                "Semaphore.acquire", "Lock.acquire", "SyncStream.read", "recv_into", "socket.recv", "(threading.py:3")


def _stage(stack: Sequence[str], stages: Sequence[Tuple[str, Sequence[str]]]) -> Optional[str]:
    """The stage of one sampled stack (root first), ``None`` when the thread was waiting."""
    if any(k in stack[-1] for k in _IDLE_LEAVES):
        return None
    joined = ";".join(stack)
    for name, keys in stages:
        if any(k in joined for k in keys):
            return name
    return "other"


def summarise(raw: Path, stages: Sequence[Tuple[str, Sequence[str]]], rate: int, requests: int,
              top: int = 15) -> Dict[str, Any]:
    """py-spy's raw (collapsed) output as CPU milliseconds per request, by stage and by function (own time)."""
    by_stage: Dict[str, float] = collections.Counter()
    by_leaf: Dict[str, float] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        stage = _stage(frames, stages)
        if stage is None:
            continue
        by_stage[stage] += int(count)
        by_leaf[frames[-1]] += int(count)
    per_req = 1000.0 / rate / max(requests, 1)
    return {"ms_per_request": {k: v * per_req for k, v in sorted(by_stage.items(), key=lambda kv: -kv[1])},
            "total_ms_per_request": sum(by_stage.values()) * per_req,
            "top_functions_own_ms": [[k, v * per_req] for k, v in collections.Counter(by_leaf).most_common(top)]}


def _py_spy(exe: Optional[str], pid: int, out: Path, rate: int) -> Optional[subprocess.Popen]:
    """py-spy sampling ``pid`` until it gets SIGINT (then it writes ``out``)."""
    if not exe:
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _handler_profile(model: str, images: Sequence[str], risk: str, n: int, top: int, threads: int,
                     batch: Optional[int]) -> Dict[str, Any]:
    """cProfile around the /analyze handler of a demo built in this process (no HTTP), ``n`` calls."""
    try:
        from rcl_hf.space.batching import set_cpu_threads
    except ImportError:  # a Space from before the batching module: torch only
        import torch

        set_cpu_threads = torch.set_num_threads
    set_cpu_threads(threads)
    from benchmarks.space_latency import _load_app

    app = _load_app()
    kwargs = {"max_batch_size": batch} if batch else {}
    demo = app.build_demo(app.load_space_model(model, "model"), **kwargs)
    fn = next(f.fn for f in demo.fns.values() if f.api_name == "analyze")
    with contextlib.redirect_stdout(io.StringIO()):
        for img in images[:3]:
            fn(img, risk)
    prof = cProfile.Profile()
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # gr.Info's notes, printed outside a request
        prof.enable()
        for k in range(n):
            fn(images[k % len(images)], risk)
        prof.disable()
    wall = time.perf_counter() - t
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    text = buf.getvalue()
    body = text[text.index("ncalls"):] if "ncalls" in text else text
    demo.close()
    return {"calls": n, "wall_ms_per_call": wall / n * 1e3, "top_cumulative": body.rstrip()}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: a fresh EfficientNet-Lite0, synthetic labels)")
    p.add_argument("--images_dir", help="folder of JPEG/PNG files to send (default: synthetic 512x512 JPEGs)")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--py_spy", default=shutil.which("py-spy"), help="py-spy executable (default: on PATH)")
    p.add_argument("--baseline", help="a previous space_profile.json to show beside this run")
    p.add_argument("--label", default="this run", help="name of this run in the tables")
    p.add_argument("--risk", default=None, help="target risk sent (default: '10%%' when the model is calibrated)")
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    _server_args(p)
    args = p.parse_args(argv)

    work, model, images, risk = _inputs(args, "rcl_space_profile_")
    load_before = os.getloadavg()
    port = _free_port()
    proc = _start_server(model, port, args, work / "server.log")
    url = f"http://127.0.0.1:{port}/"
    from gradio_client import handle_file

    try:
        client = _client(url, args)
        for img in images[:5]:
            client.predict(handle_file(img), risk, api_name="/analyze")
        spies = [_py_spy(args.py_spy, proc.pid, work / "server.txt", args.rate),
                 _py_spy(args.py_spy, os.getpid(), work / "client.txt", args.rate)]
        time.sleep(0.5 if args.py_spy else 0.0)  # py-spy attaches
        s0, c0, t0 = _cpu_s(proc.pid), _self_cpu_s(), time.perf_counter()
        lat: List[float] = []
        for k in range(args.requests):
            t = time.perf_counter()
            client.predict(handle_file(images[k % len(images)]), risk, api_name="/analyze")
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        server_cpu, client_cpu = _cpu_s(proc.pid) - s0, _self_cpu_s() - c0
        for spy in spies:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
    finally:
        _stop_server(proc)
    n = args.requests
    sampled = {}
    if args.py_spy:  # sampled from 0.5 s before the first request to the end of the last one
        sampled = {"server": summarise(work / "server.txt", SERVER_STAGES, args.rate, n),
                   "client": summarise(work / "client.txt", CLIENT_STAGES, args.rate, n)}
    handler = _handler_profile(model, images, risk, n, 25, args.threads, args.max_batch_size)
    result = {
        "benchmark": "space_profile", "label": args.label,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/space_profile.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(), "versions": versions(["gradio", "gradio_client"]),
        "model": model if args.model else "EfficientNet-Lite0 (synthetic labels, built on the fly)",
        "images": args.images_dir or "synthetic 512x512 JPEGs", "risk": risk, "server": vars(args) | {"model": model},
        "requests": n, "wall_ms_per_request": wall / n * 1e3,
        "median_latency_ms": sorted(lat)[len(lat) // 2] * 1e3,
        "server_cpu_ms_per_request": server_cpu / n * 1e3, "client_cpu_ms_per_request": client_cpu / n * 1e3,
        "sampled": sampled, "handler_cprofile": handler,
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
    }
    if args.baseline:
        result["baseline"] = json.loads(Path(args.baseline).read_text())
    md = _markdown(result)
    write_result(result, Path(args.output_dir), markdown=md, name="space_profile")
    print(md)
    return result


def _stage_table(runs: Sequence[Dict[str, Any]], side: str) -> List[str]:
    names: List[str] = []
    for r in runs:
        for k in (r.get("sampled") or {}).get(side, {}).get("ms_per_request", {}):
            if k not in names:
                names.append(k)
    head = "| stage | " + " | ".join(f"{r['label']} ms/request" for r in runs) + " |"
    lines = [head, "|---|" + "---:|" * len(runs)]
    for k in names:
        lines.append(f"| {k} | " + " | ".join(f"{(r.get('sampled') or {}).get(side, {}).get('ms_per_request', {}).get(k, 0):.1f}"
                                              for r in runs) + " |")
    lines.append("| **total sampled** | " + " | ".join(
        f"**{(r.get('sampled') or {}).get(side, {}).get('total_ms_per_request', float('nan')):.1f}**" for r in runs) + " |")
    return lines


def _markdown(r: Dict[str, Any]) -> str:
    runs = ([r["baseline"]] if r.get("baseline") else []) + [r]
    lines = ["# Space profile: where one /analyze request spends its CPU", ""]
    for run in runs:
        lines += [f"## {run['label']}", "",
                  f"- command: `{run['command']}`",
                  f"- date: {run['date']}; load average before {', '.join(f'{x:.2f}' for x in run['load_average_before'])}, "
                  f"after {', '.join(f'{x:.2f}' for x in run['load_average_after'])} (2 logical CPUs, shared with a "
                  "training job at nice 10 and with the client)",
                  f"- commit {run['versions'].get('rcl_hf_commit', '?')[:10]}{' (dirty)' if run['versions'].get('rcl_hf_dirty') else ''}; "
                  f"model {run['model']}; images {run['images']}; one client, {run['requests']} requests one at a time",
                  f"- round trip {run['wall_ms_per_request']:.0f} ms per request (median latency {run['median_latency_ms']:.0f} ms); "
                  f"CPU per request: server {run['server_cpu_ms_per_request']:.0f} ms, client {run['client_cpu_ms_per_request']:.0f} ms",
                  f"- the handler alone in-process: {run['handler_cprofile']['wall_ms_per_call']:.0f} ms per call (under cProfile)", ""]
    if any(run.get("sampled") for run in runs):
        lines += ["## Server CPU by stage (py-spy samples of every server thread, waits excluded)", "",
                  "Milliseconds per request of samples in which a thread was not waiting (a thread waiting for the GIL "
                  "counts, so the totals exceed the CPU time measured from /proc).", ""]
        lines += _stage_table(runs, "server")
        lines += ["", "## Client CPU by stage (py-spy samples of the gradio_client process)", ""]
        lines += _stage_table(runs, "client")
        for run in runs:
            if run.get("sampled"):
                lines += ["", f"## Top server functions by own time, {run['label']} (ms per request)", "",
                          "| function | ms |", "|---|---:|"]
                lines += [f"| `{k}` | {v:.1f} |" for k, v in run["sampled"]["server"]["top_functions_own_ms"]]
    for run in runs:
        lines += ["", f"## cProfile around the /analyze handler, {run['label']} (top 25 by cumulative time, "
                      f"{run['handler_cprofile']['calls']} calls)", "", "```", run["handler_cprofile"]["top_cumulative"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
