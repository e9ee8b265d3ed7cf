"""Time of one cell of the study's frozen ISIC grid after the first, and where a warm cell spends it.

    python benchmarks/grid_cell.py [--config research/configs/risk_control_frozen_isic.yaml] \\
        [--only isic2018/split0/effnet_lite0_frozen/ce/ isic2018/split0/effnet_lite0_frozen/rcl/lam1/]

Runs the selected cells of the grid with ``python -m research.run_grid CONFIG --workers 1 --no_report`` into a
temporary output folder (the grid's embedding cache, ``data.cache_dir``, is kept: a cell after the first reads
its split's frozen-backbone embeddings from it), reads each cell's ``wall_time_s`` from its ``cell.json``
(everything the cell does: load and group the dataset, read the embeddings, train the head, predict validation
and test, calibrate, write), then profiles one more warm cell in this process with ``cProfile`` and splits it
into stages. Goal (issue: scale and load): a frozen cell on ISIC after the first <= 10 s.
Writes ``benchmarks/results/grid_cell.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import glob
import json
import os
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the benchmarks package
from benchmarks import (load_average, machine_info, profile_markdown, profile_stages, render_markdown,  # noqa: E402
                        versions, write_result)

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 10.0
DEFAULT_CONFIG = "research/configs/risk_control_frozen_isic.yaml"
DEFAULT_ONLY = ("isic2018/split0/effnet_lite0_frozen/ce/", "isic2018/split0/effnet_lite0_frozen/rcl/lam1/")

#: Stages of a warm cell: label -> (file suffix, function) whose cumulative time is the stage's (they may nest).
STAGES: Sequence[Tuple[str, str, str]] = (
    ("whole cell (run_cell)", "research/grid.py", "run_cell"),
    ("load + group the dataset (load_data)", "rcl_hf/train_data.py", "load_data"),
    ("image checks (cached)", "rcl_hf/data/images.py", "validate_images"),
    ("build the model (backbone weights)", "rcl_hf/models.py", "build_model"),
    ("frozen-backbone embeddings (read from the cache)", "rcl_hf/frozen.py", "cached_embeddings"),
    ("head training (Trainer.train)", "transformers/trainer.py", "train"),
    ("validation + test predictions (Trainer.predict)", "transformers/trainer.py", "predict"),
    ("confusion-matrix plots", "rcl_hf/plots.py", "plot_confusion_matrix"),
    ("calibration of the decision layer", "rcl_hf/train_job.py", "_calibrate"),
)


def _cells(output_dir: Path) -> Dict[str, float]:
    out = {}
    for path in glob.glob(str(output_dir / "**" / "cell.json"), recursive=True):
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        if info.get("status") == "done":
            out[info["cell_id"]] = float(info["wall_time_s"])
    return out


def run_cells(config: str, only: Sequence[str], output_dir: Path) -> Dict[str, Any]:
    """Run the cells in a child process (one worker: cells one after another); their wall times in run order."""
    cmd = [sys.executable, "-m", "research.run_grid", config, "--workers", "1", "--no_report",
           "--output_dir", str(output_dir), "--only", *only]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the grid failed ({done.returncode}): {done.stderr[-2000:]}")
    times = _cells(output_dir)
    order = [c.cell_id for c in _grid(config, output_dir).cells if c.cell_id in times]  # the order the grid ran them
    return {"process_wall_s": round(wall, 2), "cells": [{"cell_id": k, "wall_time_s": times[k]} for k in order]}


def _grid(config: str, output_dir: Path) -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from research.grid import load_grid

    return load_grid(config, output_dir=str(output_dir))


def profile_cell(config: str, cell_id: str, output_dir: Path, top: int = 20) -> Dict[str, Any]:
    """cProfile of one warm cell run in this process (``research.grid.run_cell``), split into stages."""
    from research.grid import run_cell

    cell = next(c for c in _grid(config, output_dir).cells if c.cell_id == cell_id)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(run_cell, cell)
    wall = time.perf_counter() - t0
    return {"cell_id": cell_id, "wall_s": round(wall, 2), **profile_stages(pstats.Stats(prof), STAGES, top=top)}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"grid YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--only", nargs="+", default=list(DEFAULT_ONLY), help="cell-id substrings of the cells to run")
    p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    t_all = time.perf_counter()
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="rcl_grid_cell_"))
    try:
        ran = run_cells(args.config, args.only, tmp / "cells")
        cells = ran["cells"]
        if len(cells) < 2:
            raise SystemExit(f"--only selected {len(cells)} cell(s): at least 2 are needed (the first, then the rest)")
        prof = profile_cell(args.config, cells[-1]["cell_id"], tmp / "profiled")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    later = [c["wall_time_s"] for c in cells[1:]]
    median = statistics.median(later)
    table = {"columns": ["cell", "order", "wall s"],
             "rows": [[c["cell_id"], k + 1, c["wall_time_s"]] for k, c in enumerate(cells)]}
    stages = "; ".join(f"{s['stage']} {s['seconds']:.2f} s" for s in prof["stages"] if s["calls"])
    findings = [
        f"{len(cells)} cells in one worker process: first {cells[0]['wall_time_s']:.2f} s, then median "
        f"{median:.2f} s (min {min(later):.2f}, max {max(later):.2f}); goal <= {GOAL_S:.0f} s after the first: "
        + ("met" if median <= GOAL_S else "MISSED") + f". The grid process took {ran['process_wall_s']:.1f} s in all "
        "(imports included).",
        f"One more warm cell profiled in-process ({prof['cell_id']}, {prof['wall_s']:.2f} s under cProfile); stages by "
        f"cumulative time (they may nest): {stages}.",
    ]
    result = {
        "benchmark": "grid_cell", "title": "One frozen ISIC grid cell after the first: wall time and stages",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/grid_cell.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(), "versions": versions(),
        "config": {"grid": args.config, "only": " ".join(args.only)},
        "load_average": {"before": load_before, "after": load_average()}, "wall_s": time.perf_counter() - t_all,
        "cells": cells, "median_after_first_s": median, "profile": prof, "table": table, "findings": findings,
        "goal": {"seconds": GOAL_S, "met": median <= GOAL_S},
    }
    md = render_markdown(result) + profile_markdown(prof, "Stages of the profiled warm cell (cumulative seconds):")
    write_result(result, Path(args.output_dir), markdown=md, name="grid_cell")
    print(md)
    return result


if __name__ == "__main__":
    main()
