"""``python -m benchmarks [names...] [--quick] [--real] [--repeats N] [--output_dir DIR]``.

Runs the named benchmarks (default: all of :data:`benchmarks.BENCHMARKS`) one
after another in this process, writes ``<name>.json``/``<name>.md`` for each and
the combined ``README.md`` into ``--output_dir`` (default ``benchmarks/results``),
and prints each markdown table. ``--quick`` shrinks every size for a smoke run
(its figures are not the recorded ones); ``--real`` adds the real-data pipeline
(``../shared/data``) to ``data_pipeline``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import BENCHMARKS, RESULTS_DIR, finish, load_average, render_markdown, write_index, write_result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the harness")
    parser.add_argument("--real", action="store_true", help="data_pipeline: also the real Brain Tumor MRI images")
    parser.add_argument("--data_dir", default=None, help="real data folder (default: ../shared/data beside the repo)")
    parser.add_argument("--repeats", type=int, default=None, help="override each benchmark's number of timed rounds")
    parser.add_argument("--output_dir", default=None,
                        help="where results are written (default benchmarks/results; with --quick, a temporary folder "
                             "so a smoke run never overwrites the recorded results)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only; write no files")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.output_dir is None:
        args.output_dir = os.path.join(tempfile.gettempdir(), "rcl_hf_benchmarks_quick") if args.quick else str(RESULTS_DIR)
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    names = args.names or list(BENCHMARKS)
    results = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        load_before = load_average()
        started = time.perf_counter()
        print(f"== {name} ...", flush=True)
        raw = module.run(quick=args.quick, real=args.real, repeats=args.repeats, data_dir=args.data_dir)
        result = finish(raw, started=started, load_before=load_before,
                        argv=list(sys.argv[1:]) if argv is None else list(argv))
        if args.write:
            write_result(result, Path(args.output_dir))
        print(render_markdown(result), flush=True)
        results.append(result)
    if args.write:
        print(f"wrote {write_index(Path(args.output_dir))}")
    return results


if __name__ == "__main__":
    main()
