"""Start of the Space with no argument: ``python spaces_demo/app.py`` serving the shipped Brain-MRI model.

    python benchmarks/space_default_start.py [--repeats 3]

Each repeat starts ``spaces_demo/app.py`` (no model named: :func:`rcl_hf.space.startup.default_model`, the
repository's ``models/brain-tumor-mri-efficientnet-lite0``) in a fresh process and counts the seconds from the
process start to the moment the server answers ``/gradio_api/info`` (imports included: torch, transformers, gradio;
loading the model, its decision layer and OOD guard; tracing the forward pass; building the page), then stops it.
The first repeat runs with a cold page cache for the model files only as far as the OS allows (nothing is
cleared); the table gives every repeat, their median and the server's peak resident memory. Also the time of
``app.py --help`` (imports and argument parsing only). Goal: median <= 15 s after set-up.
Writes ``benchmarks/results/space_default_start.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the benchmarks package
from benchmarks import load_average, machine_info, render_markdown, versions, write_result  # noqa: E402
from benchmarks.space_cold_start import time_help, time_start  # noqa: E402
from benchmarks.space_load import ROOT  # noqa: E402

GOAL_S = 15.0


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout_s", type=float, default=300)
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    from rcl_hf.space.startup import default_model

    model = default_model()
    if not Path(model).is_dir():
        raise SystemExit(f"no shipped model folder in this checkout ({model}): the benchmark times the shipped model")
    t_all, load_before = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="rcl_space_default_") as tmp:
        work = Path(tmp)
        help_s = time_help(work)
        starts = [time_start([], work, work / f"start{k}.log", args.timeout_s) for k in range(args.repeats)]
    secs = [s["seconds"] for s in starts]
    median = statistics.median(secs)
    rows = [[f"start {k + 1}", s["seconds"], GOAL_S, "met" if s["seconds"] <= GOAL_S else "MISSED", s["peak_rss_mb"]]
            for k, s in enumerate(starts)]
    rows += [["median", median, GOAL_S, "met" if median <= GOAL_S else "MISSED", "-"],
             ["app.py --help (imports only)", help_s, "-", "", "-"]]
    result = {
        "benchmark": "space_default_start",
        "title": "Space start with no argument (the shipped Brain-MRI model): seconds to serving",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/space_default_start.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(), "versions": versions(["gradio"]),
        "config": {"model": str(Path(model).relative_to(ROOT)) if Path(model).is_relative_to(ROOT) else model,
                   "repeats": args.repeats},
        "load_average": {"before": load_before, "after": load_average()},
        "wall_s": time.perf_counter() - t_all,
        "starts": starts, "help_s": help_s,
        "table": {"columns": ["start", "seconds", "goal s", "", "server peak RSS MiB"], "rows": rows},
        "findings": [f"`python spaces_demo/app.py` (no argument) served {Path(model).name} after a median of "
                     f"{median:.1f} s over {args.repeats} fresh processes (goal {GOAL_S:.0f} s: "
                     f"{'met' if median <= GOAL_S else 'missed'}); imports alone take {help_s:.1f} s."],
        "goal": {"seconds": GOAL_S, "met": median <= GOAL_S},
    }
    md = render_markdown(result)
    write_result(result, Path(args.output_dir), markdown=md, name="space_default_start")
    print(md)
    return result


if __name__ == "__main__":
    main()
