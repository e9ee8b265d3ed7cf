"""Cold and warm start of the Gradio Space's ``--train`` path, and where a cold start spends its time.

    python benchmarks/space_cold_start.py --data_dir ../shared/data/brain_tumor_mri [--dataset brain_tumor_mri]

Three measurements, each in a fresh process, all caches in a new temporary folder:

* **cold**: ``spaces_demo/app.py --train DATASET --data_dir DIR`` with empty caches (``RCL_HF_CACHE``:
  image checks and frozen-backbone embeddings; ``HF_DATASETS_CACHE``) and no trained models: seconds from
  the process start until the server answers ``/gradio_api/info`` (imports, loading and grouping the
  dataset, embedding, training both heads, the OOD guard, the calibrations, loading both models, the page);
* **warm**: the same command again (same caches, the trained folders reused);
* **profile**: ``cProfile`` around the app's ``main`` with a third set of empty caches and the server's
  launch replaced by a no-op: the start split into stages by the cumulative time of the functions that
  make them (listed in :data:`STAGES`), and the top functions by cumulative time.

Also the time of ``app.py --help`` (imports and argument parsing only) and the server's peak resident memory
(``VmHWM``) when it answered. Goal (issue: scale and load): cold <= 60 s, warm <= 15 s on a quiet 2-core machine.
Writes ``benchmarks/results/space_cold_start.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pstats
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the benchmarks package
from benchmarks import (load_average, machine_info, profile_markdown, profile_stages, render_markdown,  # noqa: E402
                        versions, write_result)
from benchmarks.space_load import ROOT, _free_port, _rss_mb, _stop_server, space_env, wait_ready  # noqa: E402

GOAL_COLD_S, GOAL_WARM_S = 60.0, 15.0

#: Stages of a cold start: name -> (file suffix, function name) whose cumulative time is the stage's. They nest
#: (training includes embedding), so the table lists each with what it contains.
STAGES: Sequence[Tuple[str, str, str]] = (
    ("whole start (app main)", "spaces_demo/app.py", "main"),
    ("train the pair (train_space_pair)", "rcl_hf/space/train.py", "train_space_pair"),
    ("load + group the dataset (load_data, every call)", "rcl_hf/train_data.py", "load_data"),
    ("image checks (read, SHA-1, dHash; cached by path, size, mtime)", "rcl_hf/data/images.py", "validate_images"),
    ("frozen-backbone embeddings (every split)", "rcl_hf/frozen.py", "extract_embeddings"),
    ("head training (Trainer.train)", "transformers/trainer.py", "train"),
    ("OOD guard fit", "rcl_hf/ood_fit.py", "fit_ood_guard"),
    ("OOD guard from embeddings", "rcl_hf/ood_fit.py", "fit_ood_guard_on_embeddings"),
    ("calibrations (every target risk)", "rcl_hf/space/certified.py", "save_alpha_calibrations"),
    ("load both models for serving", "rcl_hf/space/loading.py", "load_space_model"),
    ("build the page (gradio Blocks)", "spaces_demo/app.py", "build_demo"),
)

_PROFILE_CHILD = r"""
import cProfile, sys, time
t0 = time.perf_counter()
prof = cProfile.Profile()
prof.enable()
sys.path.insert(0, {space!r})
import app
app.launch_demo = lambda *a, **k: None  # everything a start does except serving
code = app.main({argv!r})
prof.disable()
prof.dump_stats({out!r})
print("PROFILE_WALL_S", time.perf_counter() - t0, "RC", code)
"""


def _env(work: Path) -> Dict[str, str]:
    """The Space's benchmark environment with every cache under ``work``."""
    return space_env([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")], RCL_HF_CACHE=str(work / "rcl_cache"),
                     HF_DATASETS_CACHE=str(work / "hf_datasets"))


def time_start(train_args: List[str], work: Path, log: Path, timeout_s: float) -> Dict[str, Any]:
    """Start the Space, wait until it answers, stop it: seconds to ready and its peak RSS."""
    port = _free_port()
    cmd = [sys.executable, str(ROOT / "spaces_demo" / "app.py"), *train_args, "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(work), cwd=ROOT)
    try:
        wait_ready(proc, port, log, timeout_s=timeout_s, poll_s=0.2)
        ready = time.perf_counter() - t0
        rss = _rss_mb(proc.pid, "VmHWM")
    finally:
        _stop_server(proc)
    return {"seconds": round(ready, 2), "peak_rss_mb": rss, "load_average_after": list(os.getloadavg())}


def time_help(work: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "spaces_demo" / "app.py"), "--help"], env=_env(work), cwd=ROOT,
                   check=True, capture_output=True)
    return round(time.perf_counter() - t0, 2)


def profile_start(train_args: List[str], work: Path, top: int = 25) -> Dict[str, Any]:
    """cProfile of the app's start (no serving) with empty caches: stage times and the top functions."""
    out = work / "start.prof"
    code = _PROFILE_CHILD.format(space=str(ROOT / "spaces_demo"), argv=train_args + ["--port", str(_free_port())],
                                 out=str(out))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=_env(work), cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"the profiled start failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"wall_s": round(wall, 2), **profile_stages(pstats.Stats(str(out)), STAGES, top=top)}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="the raw dataset folder (e.g. ../shared/data/brain_tumor_mri)")
    p.add_argument("--dataset", default="brain_tumor_mri")
    p.add_argument("--timeout_s", type=float, default=1800, help="longest wait for one start")
    p.add_argument("--no_profile", action="store_true", help="skip the profiled third start")
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"--data_dir {args.data_dir!r} is not a folder")
    t_all = time.perf_counter()
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="rcl_space_cold_"))
    try:
        served, profiled = tmp / "served", tmp / "profiled"
        train_args = ["--train", args.dataset, "--data_dir", os.path.abspath(args.data_dir)]
        help_s = time_help(served)
        cold = time_start(train_args + ["--out", str(served / "space")], served, tmp / "cold.log", args.timeout_s)
        warm = time_start(train_args + ["--out", str(served / "space")], served, tmp / "warm.log", args.timeout_s)
        prof = None if args.no_profile else profile_start(train_args + ["--out", str(profiled / "space")], profiled)
        with open(served / "space" / "rcl" / "rcl_run.json", encoding="utf-8") as fh:
            recipe = json.load(fh)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = {"columns": ["start", "seconds", "goal s", "", "server peak RSS MiB"],
             "rows": [["cold (empty caches, no models)", cold["seconds"], GOAL_COLD_S,
                       "met" if cold["seconds"] <= GOAL_COLD_S else "MISSED", cold["peak_rss_mb"]],
                      ["warm (caches and models reused)", warm["seconds"], GOAL_WARM_S,
                       "met" if warm["seconds"] <= GOAL_WARM_S else "MISSED", warm["peak_rss_mb"]],
                      ["app.py --help (imports only)", help_s, "-", "", "-"]]}
    findings = [f"Trained pair: frozen EfficientNet-Lite0, {recipe['split_sizes']} images per split, "
                f"{recipe['epochs']} epochs; the dataset folder holds every image, all of them checked and grouped."]
    if prof:
        whole = next(s["seconds"] for s in prof["stages"] if s["stage"].startswith("whole")) or 1.0
        findings.append(f"Profiled cold start (cProfile, no serving): {prof['wall_s']:.1f} s wall. Stages by cumulative "
                        "time (they nest; share of the app's main): " + "; ".join(
                            f"{s['stage']} {s['seconds']:.1f} s ({100 * s['seconds'] / whole:.0f}%, {s['calls']} calls)"
                            for s in prof["stages"] if s["calls"]) + ".")
    result = {
        "benchmark": "space_cold_start", "title": "Space start with --train: cold and warm, and the cold start profiled",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/space_cold_start.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(), "versions": versions(["gradio"]),
        "config": {"dataset": args.dataset, "data_dir": args.data_dir},
        "load_average": {"before": load_before, "after": load_average()},
        "wall_s": time.perf_counter() - t_all,
        "cold": cold, "warm": warm, "help_s": help_s, "profile": prof, "table": table, "findings": findings,
        "goal": {"cold_s": GOAL_COLD_S, "warm_s": GOAL_WARM_S,
                 "met": cold["seconds"] <= GOAL_COLD_S and warm["seconds"] <= GOAL_WARM_S},
    }
    md = render_markdown(result)
    if prof:
        md += profile_markdown(prof, "Stages of the profiled cold start (cumulative seconds; stages nest):")
    write_result(result, Path(args.output_dir), markdown=md, name="space_cold_start")
    print(md)
    return result


if __name__ == "__main__":
    main()
