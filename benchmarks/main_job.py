"""Wall time of the main job (``make main`` = ``python scripts/main_job.py``): target ≤ 120 s after set-up.

    python benchmarks/main_job.py            # times one default run, writes benchmarks/results/main_job.{md,json}
    python benchmarks/main_job.py --no-write # print only

The job runs as a child process exactly as ``make main`` runs it (a fresh interpreter, so imports
count), with its output in a temporary folder. Recorded: the wall time, the child's CPU time
(user + system; it hardly depends on other load, unlike the wall time), the 1/5/15-minute load
averages before and after (other processes on a shared machine stretch the wall time), the
machine, and the table and verdict the job printed. A figure, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import RESULTS_DIR, load_average, machine_info, versions  # noqa: E402

TARGET_S = 120.0
NAME = "main_job"


def run(extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Run ``scripts/main_job.py`` once in a child process; return the measured figures."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "main")
        cmd = [sys.executable, str(ROOT / "scripts" / "main_job.py"), "--output_dir", out, "--disable_tqdm", "true", *extra]
        load_before = load_average()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = load_average()
        if proc.returncode != 0:
            raise RuntimeError(f"main job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(os.path.join(out, "comparison.json"), encoding="utf-8") as fh:
            comparison = json.load(fh)
        with open(os.path.join(out, "comparison.md"), encoding="utf-8") as fh:
            report = fh.read()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "name": NAME,
        "command": "python scripts/main_job.py  (= make main once .venv is set up; timed by python benchmarks/main_job.py)",
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "job_reported_wall_s": comparison.get("wall_time_s"),
        "target_s": TARGET_S,
        "meets_target": wall <= TARGET_S,
        "nice": os.nice(0),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "verdict": comparison.get("verdict"),
        "report": report,
        "machine": machine_info(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _machine(info: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {info.get(k)}" for k in ("cpu", "logical_cpus", "platform", "python"))


def render(result: Dict[str, Any]) -> str:
    lines = [
        "# Main job wall time", "",
        f"Command: `{result['command']}`", "",
        "| wall s | CPU s (user+sys) | target s | met | load average before (1/5/15 min) | after | nice |",
        "|---|---|---|---|---|---|---|",
        f"| {result['wall_s']} | {result['cpu_s']} | {result['target_s']:g} | {'yes' if result['meets_target'] else 'no'} "
        f"| {result['load_average_before']} | {result['load_average_after']} | {result['nice']} |", "",
        f"Machine: {_machine(result['machine'])}. "
        f"Measured {result['date']}. A load average above the core count means other "
        "processes shared the CPUs and stretched the wall time; the CPU time is the load-independent figure.", "",
        "What the job printed:", "", result["report"].strip(), "",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only; write no files")
    parser.add_argument("--render", action="store_true", help="re-render main_job.md from main_job.json; run nothing")
    parser.add_argument("extra", nargs="*", help="flags passed on to scripts/main_job.py (after --)")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((RESULTS_DIR / f"{NAME}.json").read_text(encoding="utf-8"))
        (RESULTS_DIR / f"{NAME}.md").write_text(render(result), encoding="utf-8")
        return result
    result = run(args.extra)
    text = render(result)
    print(text)
    if args.write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{NAME}.md").write_text(text, encoding="utf-8")
        (RESULTS_DIR / f"{NAME}.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
