"""rcl_hf performance benchmarks: each one a ratio measured inside one process run.

Run them with ``python -m benchmarks [names...] [--quick] [--real]`` from the
repository root (see ``benchmarks/__main__.py``). Every benchmark module has
``run(quick=False, real=False, repeats=None) -> dict`` and returns:

* ``title``, ``config`` (sizes, model, batch, repeats);
* ``table``: ``{"columns": [...], "rows": [[...], ...]}`` (the markdown table);
* ``ratios``: a list of ``{"name", "numerator", "denominator", "a", "b", "value",
  "target", "direction", "meets"}`` where ``value == a / b`` and ``a``, ``b`` are
  medians measured in the same run;
* ``findings``: sentences on what was measured and what it means.

The harness adds the machine (CPU model, cores, 1/5/15-min load average before
and after: other processes inflate timings), versions (torch, transformers, ...,
the rcl_hf git commit) and the exact command, then writes
``benchmarks/results/<name>.json`` / ``<name>.md`` and the combined
``benchmarks/results/README.md``.

Timing method (:func:`interleave`): the variants being compared run in turns
(A B, then B A, ...), after warm-up, so drift of the machine's load hits both
alike; each variant's median is reported, and the ratio of the medians.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

#: The benchmarks ``python -m benchmarks`` runs, in order.
BENCHMARKS = ("loss_overhead", "trainer_throughput", "data_pipeline", "metric_speed", "inference_latency")

__all__ = [
    "BENCHMARKS",
    "RESULTS_DIR",
    "interleave",
    "load_average",
    "machine_info",
    "profile_markdown",
    "profile_stages",
    "make_ratio",
    "render_markdown",
    "stats",
    "versions",
    "write_index",
    "write_result",
]


# ----------------------------------------------------------------------------- timing
def interleave(
    variants: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    timer: Callable[[], float] = time.perf_counter,
) -> Dict[str, List[float]]:
    """Time each variant ``repeats`` times in turns; returns seconds per call, per variant.

    Round ``r`` runs the variants in order when ``r`` is even and in reverse when
    odd (A B | B A | A B ...), so a variant is not always first after the other.
    ``warmup`` untimed rounds come first.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(variants)
    if not names:
        raise ValueError("interleave needs at least one variant")
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            t = timer()
            variants[name]()
            out[name].append(timer() - t)
    return out


def stats(values: Sequence[float]) -> Dict[str, float]:
    """Median, 10th/90th percentile, mean, min, max and count of positive finite values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("stats needs at least one value")
    bad = [v for v in vals if not math.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(f"timings must be positive and finite, got {bad[:3]}")
    ordered = sorted(vals)

    def pct(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {
        "median": statistics.median(vals),
        "p10": pct(0.1),
        "p90": pct(0.9),
        "mean": statistics.fmean(vals),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(vals),
    }


def make_ratio(
    name: str,
    numerator: str,
    denominator: str,
    a: float,
    b: float,
    target: Optional[float] = None,
    direction: str = "<=",
    unit: str = "",
) -> Dict[str, Any]:
    """``{"value": a / b, ...}`` and whether it meets ``target`` (``direction`` ``"<="`` or ``">="``)."""
    if direction not in ("<=", ">="):
        raise ValueError(f"direction must be '<=' or '>=', got {direction!r}")
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
        raise ValueError(f"ratio {name!r} needs positive finite values, got {a} / {b}")
    value = a / b
    meets = None if target is None else bool(value <= target if direction == "<=" else value >= target)
    return {"name": name, "numerator": numerator, "denominator": denominator, "a": a, "b": b, "unit": unit,
            "value": value, "target": target, "direction": direction, "meets": meets}


# ---------------------------------------------------------------------------- context
def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15-minute load averages (``None`` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> Dict[str, Any]:
    """CPU model, logical and usable cores, torch threads, platform, GPU (if any)."""
    import torch

    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def versions(extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Library versions (plus the ``extra`` packages) and the rcl_hf git commit (``dirty`` when files differ from it)."""
    out: Dict[str, Any] = {}
    for name in ("torch", "torchvision", "transformers", "accelerate", "datasets", "evaluate", "timm", "numpy", "PIL",
                 "rcl_hf", *extra):
        try:
            mod = __import__(name)
            out["pillow" if name == "PIL" else name] = str(getattr(mod, "__version__", "?"))
        except Exception:  # an optional package that is missing
            out[name] = None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks")
    out["rcl_hf_commit"] = commit
    out["rcl_hf_dirty"] = bool(status) if status is not None else None
    return out


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as typed: ``python -m benchmarks ...`` (with the environment's thread settings)."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ)
    cmd = " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks", *args])
    return f"{env} {cmd}".strip()


# ---------------------------------------------------------------------------- output
def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        mag = abs(value)
        return f"{value:.4f}" if mag < 10 else (f"{value:.1f}" if mag < 1e4 else f"{value:,.0f}")
    if value is None:
        return "-"
    return str(value)


def _ratio_cell(r: Mapping[str, Any]) -> str:
    target = "-" if r.get("target") is None else f"{r['direction']} {r['target']}"
    met = {True: "met", False: "MISSED", None: "-"}[r.get("meets")]
    return f"| {r['name']} | {r['numerator']} / {r['denominator']} | {r['value']:.3f} | {target} | {met} |"


def render_markdown(result: Mapping[str, Any]) -> str:
    """One benchmark's markdown: header (command, machine, load, versions), ratios, table, findings."""
    m, v = result["machine"], result["versions"]
    load = result.get("load_average", {})
    lines = [
        f"# {result['title']}",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; wall time {result['wall_s']:.1f} s",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), torch threads "
        f"{m['torch_threads']}, GPU: {m.get('gpu') or 'none'}; {m['platform']}",
        f"- load average (1/5/15 min): {load.get('before')} before, {load.get('after')} after"
        + (" - the machine was shared; timings are inflated and noisier than on a quiet machine"
           if (load.get("before") or [0])[0] > 0.5 * (m["usable_cpus"] or 1) else ""),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if not k.startswith("rcl_hf_"))
        + f"; rcl_hf commit {v.get('rcl_hf_commit') or '?'}" + (" (+ uncommitted changes)" if v.get("rcl_hf_dirty") else ""),
        "- config: " + ", ".join(f"{k}={val}" for k, val in result.get("config", {}).items()),
        "",
    ]
    if result.get("ratios"):
        lines += ["| ratio | a / b | value | target | |", "|---|---|---:|---|---|"]
        lines += [_ratio_cell(r) for r in result["ratios"]]
        lines.append("")
    table = result.get("table")
    if table:
        lines.append("| " + " | ".join(table["columns"]) + " |")
        first = table["rows"][0] if table["rows"] else []
        numeric = [isinstance(c, (int, float)) and not isinstance(c, bool) for c in first]
        lines.append("|" + "|".join("---:" if i < len(numeric) and numeric[i] else "---"
                                    for i in range(len(table["columns"]))) + "|")
        for row in table["rows"]:
            lines.append("| " + " | ".join(_fmt(c) for c in row) + " |")
        lines.append("")
    if result.get("findings"):
        lines += ["Findings:", ""] + [f"- {f}" for f in result["findings"]] + [""]
    return "\n".join(lines)


def write_result(result: Mapping[str, Any], out_dir: Path = RESULTS_DIR, *, markdown: Optional[str] = None,
                 name: Optional[str] = None) -> Dict[str, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (``name``: ``result["benchmark"]`` by default; ``markdown``: the
    benchmark's own page, else :func:`render_markdown`); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or result["benchmark"]
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    _atomic_write(paths["json"], json.dumps(result, indent=2, default=_json_default) + "\n")
    _atomic_write(paths["md"], markdown if markdown is not None else render_markdown(result))
    return paths


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _atomic_write(path: Path, text: str) -> None:
    from rcl_hf.atomic_io import atomic_write_text

    atomic_write_text(path, text)


def _read_results(out_dir: Path, names: Iterable[str]) -> List[Dict[str, Any]]:
    found = []
    for name in names:
        path = out_dir / f"{name}.json"
        if path.is_file():
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
    return found


def write_index(out_dir: Path = RESULTS_DIR) -> Path:
    """``README.md``: every ratio of every benchmark result in ``out_dir``, with its machine and command."""
    out_dir = Path(out_dir)
    results = _read_results(out_dir, BENCHMARKS)
    lines = [
        "# rcl_hf benchmark results",
        "",
        "Each ratio is `a / b` of two medians measured in the same process run, the variants interleaved "
        "(see `benchmarks/__init__.py`). Re-run with `python -m benchmarks` from the repository root "
        "(`--quick` for a smoke run, `--real` to add the real-data pipeline); on a GPU machine, "
        "`bash benchmarks/gpu_check.sh`.",
        "",
        "| benchmark | ratio | a / b | value | target | | load avg before -> after | date |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    machines = {}
    for res in results:
        load = res.get("load_average", {})
        lb = (load.get("before") or ["?"])[0]
        la = (load.get("after") or ["?"])[0]
        for r in res.get("ratios", []):
            cell = _ratio_cell(r)[2:]  # drop the leading "| "
            lines.append(f"| [{res['benchmark']}]({res['benchmark']}.md) | {cell} {lb} -> {la} | {res['date'][:16]} |")
        m = res["machine"]
        key = (m["cpu"], m["logical_cpus"], m.get("gpu"))
        machines.setdefault(key, []).append(res)
    space = out_dir / "space_latency.json"
    if space.is_file():
        try:
            s = json.loads(space.read_text(encoding="utf-8"))
            med = s["per_image"]["analyze() end to end, 1 image"]["median_ms"]
            sl = (s.get("machine") or {}).get("load_average_1min") or {}
            sload = f"{sl['before']} -> {sl['after']}" if sl.get("before") is not None else "-"
            lines.append(f"| [space_latency](space_latency.md) | Space analyze() per image | - | {med:.1f} ms | "
                         f"< {s.get('target_ms', 100):.0f} ms | {'met' if s.get('meets_target') else 'MISSED'} | "
                         f"{sload} | {s.get('date', '')[:16]} |")
        except (OSError, ValueError, KeyError, TypeError):
            pass
    lines += ["", "Machines and commands:", ""]
    for (cpu, n, gpu), group in machines.items():
        v = group[0]["versions"]
        lines.append(f"- {cpu}, {n} logical CPUs, GPU {gpu or 'none'}; torch {v.get('torch')}, transformers "
                     f"{v.get('transformers')}, rcl_hf commit {(v.get('rcl_hf_commit') or '?')[:10]}"
                     + (" (+ uncommitted changes)" if v.get("rcl_hf_dirty") else ""))
        for res in group:
            lines.append(f"  - {res['benchmark']}: `{res['command']}`")
        loads = [v[0] for res in group for v in (res.get("load_average") or {}).values() if v]
        usable = group[0]["machine"].get("usable_cpus") or 1
        if loads and max(loads) > 0.5 * usable:
            lines.append(
                f"  - shared machine: 1-min load average up to {max(loads):.1f} on {usable} usable CPUs during these "
                f"runs (torch threads {group[0]['machine'].get('torch_threads')}). The CPU was oversubscribed, so "
                "absolute times are inflated several-fold and noisy, and ratios within a few percent of 1 cannot be "
                "told apart; the loss-alone estimate (loss_overhead) and the metric timings are the robust figures.")
    lines.append("")
    path = out_dir / "README.md"
    _atomic_write(path, "\n".join(lines))
    return path


def finish(result: Dict[str, Any], *, started: float, load_before: Optional[List[float]], argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Add machine, versions, command, date, wall time and load averages to a benchmark's result."""
    result = dict(result)
    result.setdefault("ratios", [])
    result.setdefault("findings", [])
    result["command"] = command_line(argv)
    result["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["wall_s"] = time.perf_counter() - started
    result["machine"] = machine_info()
    result["versions"] = versions()
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result


# ----------------------------------------------------------------------------- profiles
def profile_stages(stats: Any, stages: Sequence[Sequence[str]], top: int = 20) -> Dict[str, Any]:
    """A ``pstats.Stats`` split into named stages and its top functions by cumulative time.

    ``stages``: ``(label, file suffix, function name)``; a stage's seconds are the largest cumulative time of a
    function of that name in a file ending so (nested calls are not counted twice), with its call count. Stages
    may nest (a training stage contains its data loading). Returns ``{"stages": [...], "top_cumulative": [...]}``.
    """
    found: Dict[tuple, tuple] = {}
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        file = file.replace(os.sep, "/")
        short = file.split("site-packages/")[-1].split("/src/")[-1]
        rows.append((ct, tt, nc, f"{short}:{line}({func})"))
        for _, suffix, name in stages:
            if func == name and file.endswith(suffix):
                prev = found.get((suffix, name), (0.0, 0))
                found[(suffix, name)] = (max(prev[0], ct), prev[1] + nc)
    rows.sort(reverse=True)
    return {"stages": [{"stage": label, "function": f"{suffix}:{name}",
                        "seconds": round(found.get((suffix, name), (0.0, 0))[0], 2),
                        "calls": found.get((suffix, name), (0.0, 0))[1]} for label, suffix, name in stages],
            "top_cumulative": [{"cumulative_s": round(ct, 2), "own_s": round(tt, 2), "calls": nc, "function": f}
                               for ct, tt, nc, f in rows[:top]]}


def profile_markdown(profile: Mapping[str, Any], heading: str) -> str:
    """The markdown of a :func:`profile_stages` result: ``heading``, the stage table, the top functions."""
    lines = ["", heading, "", "| stage | function | seconds | calls |", "|---|---|---:|---:|"]
    lines += [f"| {s['stage']} | `{s['function']}` | {s['seconds']:.2f} | {s['calls']} |" for s in profile["stages"]]
    lines += ["", "Top functions by cumulative time:", "", "| cumulative s | own s | calls | function |",
              "|---:|---:|---:|---|"]
    lines += [f"| {r['cumulative_s']:.2f} | {r['own_s']:.2f} | {r['calls']} | `{r['function']}` |"
              for r in profile["top_cumulative"]]
    return "\n".join(lines) + "\n"
