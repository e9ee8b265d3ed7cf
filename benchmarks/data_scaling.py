"""Data scaling: time and memory of loading, grouping and one pass over 1k to 64k images; growth exponents.

    python benchmarks/data_scaling.py                          # sizes 1000 4000 16000 64000
    python benchmarks/data_scaling.py --sizes 1000 4000 16000  # fewer sizes
    python benchmarks/data_scaling.py --quick --no-write       # smoke run (tiny sizes, nothing written)

Data: a generated Brain-MRI-like folder (``Training/<class>/scan_NNNNNN.jpg``, the
loader's own layout): ``--side`` px grayscale JPEGs (q90) of a bright disc of
low-frequency texture on black, drawn by two worker processes (the package's
synthetic generator costs 10 ms an image, too slow for 64k).  4% of the images are
planted near-copies of an earlier image in the same class: half re-encoded at
JPEG q70, half shifted by 2 px.  The largest folder is drawn once; smaller sizes
are hard links to its first ``n`` files.

Each size runs in a fresh child process (so one size's memory does not count in
the next) and measures, in order:

* ``load (cold)``: ``rcl_hf.data.load_dataset("brain_tumor_mri", ...)`` with an empty
  cache: scan, read + SHA-1 + verify + draft decode + dHash of every file, grouping
  (SHA-1 and perceptual dHash distance <= 2), derived splits, the ``datasets`` build;
* ``hash (in cold load)``: the read/hash/decode pass alone (``report.timings["check_s"]``);
* ``load (warm)``: the same call again: the image-check cache answers;
* ``duplicate search``: the perceptual grouping alone (multi-index hashing,
  ``_perceptual_components``) on the files' dHashes, and the former all-pairs
  search on the same hashes (same groups, checked);
* ``one epoch``: the train split through ``apply_transforms`` (decode with a JPEG
  draft, RandomResizedCrop to ``--image_size`` px, flip, normalise) and a
  ``DataLoader`` (batch 64, ``num_workers=0``), one full pass.

Memory: the process's resident set size (psutil RSS), sampled every 10 ms in a
thread; per stage the peak, and the peak minus the RSS when the stage began.
Growth exponents: the least-squares slope of log(time) and log(peak RSS) against
log(n) over the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAME = "data_scaling"
DEFAULT_SIZES = (1000, 4000, 16000, 64000)
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
NEAR_COPY_FRACTION = 0.04
STAGES = ("load (cold)", "hash (in cold load)", "load (warm)", "duplicate search", "duplicate search, all pairs",
          "one epoch")


# ----------------------------------------------------------------------------- data
def _draw(args: Sequence[int]) -> int:
    """Write images ``start .. stop - 1`` under ``folder``; near-copies re-use an earlier image of the chunk."""
    from PIL import Image

    start, stop, side, seed, folder = args
    rng = np.random.default_rng([seed, start])
    yy, xx = np.mgrid[0:side, 0:side]
    disc = (np.hypot(yy - side / 2, xx - side / 2) < 0.45 * side).astype(np.float32)
    last: Dict[str, np.ndarray] = {}
    for i in range(start, stop):
        cls = CLASSES[i % len(CLASSES)]
        path = os.path.join(folder, "Training", cls, f"scan_{i:06d}.jpg")
        if cls in last and rng.random() < NEAR_COPY_FRACTION:
            src = last[cls]
            if rng.random() < 0.5:
                Image.fromarray(src).save(path, format="JPEG", quality=70)
            else:
                Image.fromarray(np.roll(src, 2, axis=1)).save(path, format="JPEG", quality=90)
            continue
        coarse = Image.fromarray(rng.integers(40, 220, size=(6, 6), dtype=np.uint8))
        tex = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = (tex + rng.normal(0, 6, size=(side, side)).astype(np.float32)) * disc
        img = np.clip(pixels, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(path, format="JPEG", quality=90)
        last[cls] = img
    return stop - start


def make_folder(n: int, side: int, folder: Path, seed: int = 0, workers: int = 2) -> float:
    """Draw ``n`` images into ``folder`` (Brain Tumor MRI layout); returns seconds taken."""
    t = time.perf_counter()
    for cls in CLASSES:
        (folder / "Training" / cls).mkdir(parents=True, exist_ok=True)
    chunk = 2000
    jobs = [(s, min(n, s + chunk), side, seed, str(folder)) for s in range(0, n, chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        assert sum(pool.map(_draw, jobs)) == n
    return time.perf_counter() - t


def link_subset(full: Path, n: int, dest: Path) -> None:
    """``dest``: hard links to the first ``n`` images of ``full``."""
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        (dest / "Training" / cls).mkdir(parents=True, exist_ok=True)
        name = f"scan_{i:06d}.jpg"
        os.link(full / "Training" / cls / name, dest / "Training" / cls / name)


# ----------------------------------------------------------------------------- measuring
class PeakRSS:
    """Peak resident set size (psutil) while the ``with`` block runs, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.start = self.peak = 0

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _stage(out: Dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    with PeakRSS() as mem:
        t = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t
    out[name] = {"s": seconds, "peak_rss_mib": mem.peak / 2**20, "delta_rss_mib": (mem.peak - mem.start) / 2**20}
    return value


def all_pairs_components(hashes: Sequence[Optional[int]], max_distance: int, chunk: int = 1024) -> List[List[int]]:
    """The former perceptual search: every pair's XOR popcount, ``chunk`` rows at a time (for the ratio)."""
    from rcl_hf.data.duplicates import _components

    valid = [i for i, h in enumerate(hashes) if h is not None]
    arr = np.array([hashes[i] for i in valid], dtype=np.uint64)
    rows, cols = [], []
    for start in range(0, len(arr), chunk):
        ii, jj = np.nonzero(np.bitwise_count(arr[start:start + chunk, None] ^ arr[None, :]) <= max_distance)
        keep = ii + start < jj
        rows.append(ii[keep] + start)
        cols.append(jj[keep])
    labels = _components(len(valid), np.concatenate(rows), np.concatenate(cols))
    comps: Dict[int, List[int]] = {}
    for k, lab in enumerate(labels):
        comps.setdefault(int(lab), []).append(valid[k])
    return sorted((c for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def measure_one(folder: Path, cache: Path, image_size: int, workers: int) -> Dict[str, Any]:
    """All stages on one folder, in this process (run in a fresh child per size)."""
    import datasets
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from rcl_hf.data import load_dataset
    from rcl_hf.data.duplicates import _perceptual_components
    from rcl_hf.data.images import validate_images
    from rcl_hf.data.records import iter_files
    from rcl_hf.data.transforms import apply_transforms

    datasets.disable_progress_bars()
    stages: Dict[str, Any] = {}
    kw = dict(cache_dir=cache, num_workers=workers, progress=False, return_report=True)
    _, report = _stage(stages, "load (cold)", lambda: load_dataset("brain_tumor_mri", folder, **kw))
    stages["hash (in cold load)"] = {"s": report.timings["check_s"], "peak_rss_mib": None, "delta_rss_mib": None}
    dsd, warm = _stage(stages, "load (warm)", lambda: load_dataset("brain_tumor_mri", folder, **kw))
    paths = [str(p) for p in iter_files(folder)]
    hashes = [int(c.dhash, 16) if c.dhash else None for c in validate_images(paths, root=folder, cache_dir=cache,
                                                                              progress=False)]
    new = _stage(stages, "duplicate search", lambda: _perceptual_components(hashes, 2))
    old = _stage(stages, "duplicate search, all pairs", lambda: all_pairs_components(hashes, 2))
    if new != old:
        raise RuntimeError(f"multi-index and all-pairs searches disagree at n={len(hashes)}")
    train = apply_transforms(dsd, image_size=image_size)["train"]
    loader = DataLoader(train, batch_size=64, shuffle=True, collate_fn=default_data_collator, num_workers=0)

    def epoch() -> int:
        seen = 0
        for batch in loader:
            seen += batch["pixel_values"].shape[0]
        return seen

    seen = _stage(stages, "one epoch", epoch)
    return {
        "n": len(paths), "stages": stages, "epoch_images": seen, "timings_cold": report.timings,
        "timings_warm": warm.timings, "splits": {s: len(d) for s, d in dsd.items()},
        "perceptual_groups": len(new), "files_in_perceptual_groups": sum(len(g) for g in new),
        "planted_near_copies_about": int(NEAR_COPY_FRACTION * len(paths)),
    }


def exponent(ns: Sequence[float], values: Sequence[Optional[float]]) -> Optional[float]:
    """Least-squares slope of log(value) against log(n) (``None`` with fewer than two positive values)."""
    pts = [(n, v) for n, v in zip(ns, values) if v is not None and v > 0]
    if len(pts) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])


def _fmt_exp(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


# ----------------------------------------------------------------------------- driver
def run(sizes: Sequence[int], side: int, image_size: int, workers: int, work: Optional[str] = None) -> Dict[str, Any]:
    from benchmarks import make_ratio

    sizes = sorted(set(int(s) for s in sizes))
    if sizes[0] < 50:
        raise ValueError(f"--sizes must be at least 50 images each, got {sizes}")
    base = Path(work or tempfile.mkdtemp(prefix="rcl_bench_scaling_"))
    try:
        full = base / f"full_{sizes[-1]}"
        gen_s = make_folder(sizes[-1], side, full, workers=workers)
        print(f"drew {sizes[-1]} {side} px JPEGs in {gen_s:.0f} s", flush=True)
        per_size = []
        for n in sizes:
            folder = full if n == sizes[-1] else base / f"n{n}"
            if folder != full:
                link_subset(full, n, folder)
            out = base / f"result_{n}.json"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
            cmd = [sys.executable, __file__, "--one", str(folder), "--cache", str(base / f"cache_{n}"),
                   "--image_size", str(image_size), "--workers", str(workers), "--out", str(out)]
            subprocess.run(cmd, check=True, env=env, cwd=str(ROOT))
            per_size.append(json.loads(out.read_text()))
            st = per_size[-1]["stages"]
            print(f"n={n}: " + ", ".join(f"{k} {v['s']:.2f} s" for k, v in st.items()), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ns = [r["n"] for r in per_size]
    rows, exps = [], {}
    for stage in STAGES:
        times = [r["stages"][stage]["s"] for r in per_size]
        peaks = [r["stages"][stage]["peak_rss_mib"] for r in per_size]
        grown = [r["stages"][stage]["delta_rss_mib"] for r in per_size]
        exps[stage] = {"time": exponent(ns, times), "peak_rss": exponent(ns, peaks), "rss_increase": exponent(ns, grown)}
        for r in per_size:
            s = r["stages"][stage]
            rows.append([stage, r["n"], s["s"], 1e3 * s["s"] / r["n"], s["peak_rss_mib"], s["delta_rss_mib"]])
        rows.append([stage, "exponent", exps[stage]["time"], None, exps[stage]["peak_rss"], exps[stage]["rss_increase"]])
    largest = per_size[-1]["stages"]
    ratio = make_ratio(f"duplicate search at n={ns[-1]}, all pairs vs multi-index", "all-pairs s", "multi-index s",
                       largest["duplicate search, all pairs"]["s"], largest["duplicate search"]["s"], None, ">=", "s")
    load_exp = exps["load (cold)"]["time"]
    findings = [
        f"Sizes {ns}; {side} px JPEGs, drawn in {gen_s:.0f} s (not timed as a stage).",
        f"Growth exponents (slope of log time vs log n): cold load {load_exp:.2f}, warm load "
        f"{exps['load (warm)']['time']:.2f}, hashing {exps['hash (in cold load)']['time']:.2f}, duplicate search "
        f"{exps['duplicate search']['time']:.2f} (all pairs {exps['duplicate search, all pairs']['time']:.2f}), one epoch "
        f"{exps['one epoch']['time']:.2f}; target <= 1.2.",
        "Peak RSS exponents (of the peak / of the increase during the stage): " + ", ".join(
            f"{k} {_fmt_exp(exps[k]['peak_rss'])} / {_fmt_exp(exps[k]['rss_increase'])}"
            for k in ("load (cold)", "load (warm)", "duplicate search", "one epoch"))
        + f"; the process holds about {per_size[0]['stages']['load (cold)']['peak_rss_mib'] - per_size[0]['stages']['load (cold)']['delta_rss_mib']:.0f} MiB "
        "(torch, transformers, datasets) before the first stage.",
        f"At n={ns[-1]} the all-pairs search takes {ratio['a']:.2f} s and multi-index hashing {ratio['b']:.3f} s "
        f"({ratio['value']:.0f}x), same groups ({per_size[-1]['perceptual_groups']} perceptual groups holding "
        f"{per_size[-1]['files_in_perceptual_groups']} files; about {per_size[-1]['planted_near_copies_about']} "
        "near-copies planted).",
    ]
    return {
        "benchmark": NAME,
        "title": "Data scaling: load + hash + group + one epoch, 1k to 64k images (CPU)",
        "config": {"sizes": ns, "side_px": side, "image_size": image_size, "workers": workers, "max_distance": 2,
                   "near_copy_fraction": NEAR_COPY_FRACTION, "epoch": "train split, batch 64, num_workers 0",
                   "memory": "psutil RSS sampled every 10 ms, per size in a fresh process"},
        "ratios": [ratio],
        "table": {"columns": ["stage", "n", "seconds", "ms per image", "peak RSS MiB", "RSS increase MiB"],
                  "rows": rows},
        "findings": findings,
        "exponents": exps,
        "raw": per_size,
    }


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="numbers of images")
    parser.add_argument("--side", type=int, default=256, help="side of the generated JPEGs in px (default 256)")
    parser.add_argument("--image_size", type=int, default=64, help="training crop of the epoch pass (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="processes drawing images / threads checking them")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 60 120, 64 px images")
    parser.add_argument("--output_dir", default=None, help="where results go (default benchmarks/results)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only; write no files")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one folder
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = measure_one(Path(args.one), Path(args.cache), args.image_size, args.workers)
        Path(args.out).write_text(json.dumps(result))
        return None
    from benchmarks import RESULTS_DIR, finish, load_average, render_markdown, write_result

    sizes, side = ([60, 120], 64) if args.quick else (args.sizes, args.side)
    load_before, started = load_average(), time.perf_counter()
    raw = run(sizes, side, args.image_size, args.workers)
    result = finish(raw, started=started, load_before=load_before, argv=list(sys.argv[1:] if argv is None else argv))
    result["command"] = "python benchmarks/data_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(render_markdown(result), flush=True)
    if args.write:
        paths = write_result(result, Path(args.output_dir) if args.output_dir else RESULTS_DIR)
        print(f"wrote {paths['json']} and {paths['md']}")
    return result


if __name__ == "__main__":
    main()
