"""The experiment grid: one YAML file -> cells (datasets × backbones × methods × operating points × seeds),
each trained through :func:`rcl_hf.train_job.run_training` (the code path of ``scripts/train.py``).

Grid file (every key but ``datasets``, ``backbones`` and ``methods`` optional)::

    name: frozen_effnet
    output_dir: runs/experiments/frozen      # one folder per cell below it
    seeds: [0, 1, 2]                          # training seeds
    split_seeds: [0, 1, 2, 3, 4]              # optional: grouped split seeds (DataArguments.split_seed) as an axis
    data: {cache_dir: .cache/rcl_hf, drop_cross_split_duplicates: true}   # DataArguments defaults
    training: {num_train_epochs: 20, learning_rate: 1.0e-3}               # TrainingArguments overrides
    datasets:
      - {name: brain_mri, dataset: brain_tumor_mri, data_dir: ../shared/data/brain_tumor_mri}
    backbones:
      - {name: effnet_lite0_frozen, backbone: efficientnet_lite0, pretrained: efficientnet-lite0-package,
         image_size: 224, freeze_backbone: true, training: {num_train_epochs: 30}}
    methods:
      - {name: ce, loss: ce}
      - {name: rcl, loss: rcl, lam: [0.5, 1, 2, 5]}          # a list = a sweep of operating points
      - {name: rcl_margin, loss: rcl, lam: 1, severity_margin: [1, 2]}
    rules: {blend_weights: [0, 0.05, ..., 1]}                # post-hoc blend weights (default 21 in [0, 1])
    selection: {reference: ce, tolerance: 0.01}
    report: {n_boot: 1000, baselines: [focal, ce], post_hoc: ce + blend}
    keep_models: false                                        # delete weights after a cell (predictions stay)

A method's keys are :class:`~research.risk_variants.ExperimentRiskArguments`
fields (``loss``, ``lam``, ``risk_form``, ``gamma``, ``label_smoothing``,
``severity_margin``, ``logit_mixup_alpha``, ...) plus optional ``training`` /
``data`` / ``model`` overrides; list values are swept (Cartesian product). A
dataset entry takes :class:`~rcl_hf.train_job.DataArguments` fields, a backbone
entry :class:`~rcl_hf.train_job.ModelArguments` fields (plus ``training`` /
``data`` overrides). Precedence: built-in defaults < grid ``training`` / ``data``
< dataset < backbone < method.

With ``split_seeds`` every cell is repeated for each split seed (its ``data.split_seed``) and
its id gains a ``split<k>`` part; without it the cells use ``data.split_seed`` (default 0) as before.
A cell whose validation split would be empty (``val_size <= 0`` or ``max_eval_samples == 0``) is
refused when the grid is loaded: selection reads validation only, and nothing may fall back to test.

A cell is *done* when its folder holds ``cell.json`` with status ``done`` and the
same resolved arguments, plus both prediction files; :func:`run_grid` skips done
cells, so an interrupted grid resumes where it stopped, and a cell whose
arguments changed is run again. Cells run in a local worker pool, or, given an engine of
:mod:`research.executors`, each as a Slurm (submitit) job calling the same cell function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rcl_hf.decision import DEFAULT_BLEND_WEIGHTS

logger = logging.getLogger(__name__)

__all__ = ["Cell", "Grid", "load_grid", "expand_cells", "run_grid", "run_cell", "is_done", "DEFAULT_TRAINING"]

#: TrainingArguments every cell starts from (on top of rcl_hf.train_job.default_training_args).
DEFAULT_TRAINING: Dict[str, Any] = {
    "num_train_epochs": 20,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 64,
    "weight_decay": 1e-4,
    "warmup_steps": 0.05,
    "lr_scheduler_type": "cosine",
    "save_total_limit": 1,
    "logging_steps": 50,
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}
_TOP_KEYS = {"name", "output_dir", "seeds", "split_seeds", "data", "training", "datasets", "backbones", "methods", "rules",
             "selection", "report", "keep_models"}
DONE_FILE = "cell.json"
PREDICTION_FILES = ("validation_predictions.npz", "test_predictions.npz")


def _fields(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class Cell:
    """One training run of the grid, with its fully resolved arguments."""

    dataset: str
    backbone: str
    method: str
    point: str
    seed: int
    model: Dict[str, Any]
    data: Dict[str, Any]
    risk: Dict[str, Any]
    training: Dict[str, Any]
    output_dir: str
    split_seed: Optional[int] = None  # set when the grid sweeps split_seeds (then part of the id)

    @property
    def cell_id(self) -> str:
        split = "" if self.split_seed is None else f"split{self.split_seed}/"
        return f"{self.dataset}/{split}{self.backbone}/{self.method}/{_slug(self.point)}/seed{self.seed}"

    def spec(self) -> Dict[str, Any]:
        """The JSON-able identity of the cell (what the done-marker must match)."""
        return {"model": self.model, "data": self.data, "risk": self.risk,
                "training": {k: v for k, v in self.training.items() if k not in ("disable_tqdm", "logging_steps")},
                "seed": self.seed}


@dataclass
class Grid:
    """A parsed grid file (see the module docstring)."""

    name: str
    output_dir: str
    cells: List[Cell]
    blend_weights: Tuple[float, ...]
    reference: str
    tolerance: float
    n_boot: int
    baselines: Tuple[str, ...]
    post_hoc: str
    keep_models: bool
    raw: Dict[str, Any]


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("=", "")).strip("_")
    return s or "default"


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _check_keys(entry: Dict[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _named_entries(raw: Any, what: str) -> List[Dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"grid needs a non-empty list under {what!r}, got {raw!r}")
    out, seen = [], set()
    for entry in raw:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"each entry of {what!r} must be a mapping with a 'name', got {entry!r}")
        if entry["name"] in seen:
            raise ValueError(f"duplicate name {entry['name']!r} under {what!r}")
        if "/" in str(entry["name"]) or "+" in str(entry["name"]):
            raise ValueError(f"name {entry['name']!r} under {what!r} may not contain '/' or '+'")
        seen.add(entry["name"])
        out.append(dict(entry))
    return out


def load_grid(path_or_dict: Any, output_dir: Optional[str] = None) -> Grid:
    """Parse a grid YAML file (or an equivalent dict) into cells; validates every key."""
    from transformers import TrainingArguments

    from rcl_hf.train_job import DataArguments, ModelArguments
    from .risk_variants import ExperimentRiskArguments

    if isinstance(path_or_dict, dict):
        raw = dict(path_or_dict)
        base = os.getcwd()
    else:
        import yaml

        path = os.fspath(path_or_dict)
        if not os.path.exists(path):
            raise ValueError(f"grid file {path} not found")
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
        if not isinstance(raw, dict):
            raise ValueError(f"grid file {path} must hold a mapping, got {type(raw).__name__}")
        base = os.getcwd()
    _check_keys(raw, _TOP_KEYS, "grid")
    name = str(raw.get("name", "experiments"))
    out_root = output_dir or raw.get("output_dir") or os.path.join("runs", "experiments", _slug(name))
    out_root = os.path.abspath(os.path.join(base, out_root))
    seeds = raw.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a list of distinct integers, got {seeds!r}")
    split_seeds = raw.get("split_seeds")
    if split_seeds is not None:
        split_seeds = [split_seeds] if isinstance(split_seeds, int) else list(split_seeds)
        if (not split_seeds or not all(isinstance(s, int) for s in split_seeds)
                or len(set(split_seeds)) != len(split_seeds)):
            raise ValueError(f"split_seeds must be a list of distinct integers, got {split_seeds!r}")

    data_fields, model_fields = _fields(DataArguments), _fields(ModelArguments)
    risk_fields = _fields(ExperimentRiskArguments)
    train_fields = set(_fields(TrainingArguments))
    reserved_training = {"output_dir", "seed"}

    def check_training(d: Any, what: str) -> Dict[str, Any]:
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise ValueError(f"{what} must be a mapping of TrainingArguments, got {d!r}")
        _check_keys(d, sorted(train_fields - reserved_training), what)
        return dict(d)

    def check_data(d: Any, what: str) -> Dict[str, Any]:
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise ValueError(f"{what} must be a mapping of DataArguments, got {d!r}")
        _check_keys(d, data_fields, what)
        return dict(d)

    grid_training = check_training(raw.get("training"), "grid 'training'")
    grid_data = check_data(raw.get("data"), "grid 'data'")
    datasets_ = _named_entries(raw.get("datasets"), "datasets")
    backbones = _named_entries(raw.get("backbones"), "backbones")
    methods = _named_entries(raw.get("methods"), "methods")
    for d in datasets_:
        _check_keys(d, ["name", *data_fields], f"dataset {d['name']!r}")
        d.setdefault("dataset", d["name"])
    for b in backbones:
        _check_keys(b, ["name", "training", "data", *model_fields], f"backbone {b['name']!r}")
        check_training(b.get("training"), f"backbone {b['name']!r} training")
        check_data(b.get("data"), f"backbone {b['name']!r} data")
    sweeps: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {}
    for m in methods:
        _check_keys(m, ["name", "training", "data", "model", *risk_fields], f"method {m['name']!r}")
        check_training(m.get("training"), f"method {m['name']!r} training")
        check_data(m.get("data"), f"method {m['name']!r} data")
        if m.get("model") is not None:
            _check_keys(m["model"], model_fields, f"method {m['name']!r} model")
        risk = {k: v for k, v in m.items() if k in risk_fields}
        risk.setdefault("loss", m["name"])
        swept = [k for k, v in risk.items() if isinstance(v, (list, tuple))]
        for k in swept:
            if not risk[k]:
                raise ValueError(f"method {m['name']!r}: empty sweep for {k!r}")
        points = []
        for combo in itertools.product(*[risk[k] for k in swept]):
            r = {**risk, **dict(zip(swept, combo))}
            ExperimentRiskArguments(**r)  # validate now, not hours into the grid
            point = ",".join(f"{k}={_fmt(v)}" for k, v in zip(swept, combo)) or "default"
            points.append((point, r))
        sweeps[m["name"]] = points

    cells: List[Cell] = []
    for d, b, m, split, seed in itertools.product(datasets_, backbones, methods, split_seeds or [None], seeds):
        for point, risk in sweeps[m["name"]]:
            data = {**grid_data, **{k: v for k, v in d.items() if k != "name"}, **(b.get("data") or {}),
                    **(m.get("data") or {})}
            if split is not None:
                data["split_seed"] = split
            _require_validation(data, f"{d['name']}/{b['name']}/{m['name']}")
            model = {**{k: v for k, v in b.items() if k not in ("name", "training", "data")}, **(m.get("model") or {})}
            training = {**DEFAULT_TRAINING, **grid_training, **(b.get("training") or {}), **(m.get("training") or {})}
            for key in ("data_dir", "cache_dir"):  # absolute: image paths are part of the embedding-cache key
                if data.get(key) and not os.path.isabs(str(data[key])):
                    data[key] = os.path.abspath(os.path.join(base, str(data[key])))
            cell = Cell(d["name"], b["name"], m["name"], point, seed, model, data, risk, training, "", split)
            object.__setattr__(cell, "output_dir", os.path.join(out_root, cell.cell_id))
            cells.append(cell)

    rules = raw.get("rules") or {}
    _check_keys(rules, ["blend_weights"], "grid 'rules'")
    weights = tuple(float(w) for w in rules.get("blend_weights", DEFAULT_BLEND_WEIGHTS))
    if not weights or any(not 0 <= w <= 1 for w in weights) or 0.0 not in weights:
        raise ValueError(f"rules.blend_weights must lie in [0, 1] and include 0 (the argmax), got {weights}")
    selection = raw.get("selection") or {}
    _check_keys(selection, ["reference", "tolerance"], "grid 'selection'")
    report = raw.get("report") or {}
    _check_keys(report, ["n_boot", "baselines", "post_hoc"], "grid 'report'")
    reference = str(selection.get("reference", "ce"))
    if reference not in sweeps:
        raise ValueError(f"selection.reference {reference!r} is not a method of the grid {sorted(sweeps)}")
    if len(sweeps[reference]) != 1:
        raise ValueError(f"the reference method {reference!r} must have one operating point, has {len(sweeps[reference])}")
    return Grid(
        name=name, output_dir=out_root, cells=cells, blend_weights=weights, reference=reference,
        tolerance=float(selection.get("tolerance", 0.01)), n_boot=int(report.get("n_boot", 1000)),
        baselines=tuple(report.get("baselines", ["focal", reference])),
        post_hoc=str(report.get("post_hoc", f"{reference} + blend")),
        keep_models=bool(raw.get("keep_models", False)), raw=raw,
    )


def _require_validation(data: Dict[str, Any], what: str) -> None:
    """Refuse a cell without a validation split: the grid selects on validation, never on test."""
    val_size = data.get("val_size", 0.15)
    if val_size is None or float(val_size) <= 0:
        raise ValueError(f"cell {what}: val_size={val_size!r} leaves no validation split; the grid selects "
                         "operating points and checkpoints on validation only and will not fall back to test")
    if data.get("max_eval_samples") is not None and int(data["max_eval_samples"]) <= 0:
        raise ValueError(f"cell {what}: max_eval_samples={data['max_eval_samples']!r} leaves no validation split")


def expand_cells(grid: Grid, only: Optional[Sequence[str]] = None) -> List[Cell]:
    """The grid's cells, optionally filtered by substrings of their ids."""
    if not only:
        return list(grid.cells)
    return [c for c in grid.cells if any(s in c.cell_id for s in only)]


def is_done(cell: Cell) -> bool:
    """Whether ``cell`` finished with the same resolved arguments (its done-marker and predictions exist)."""
    marker = os.path.join(cell.output_dir, DONE_FILE)
    if not os.path.exists(marker):
        return False
    try:
        with open(marker, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return False
    if info.get("status") != "done" or info.get("spec") != json.loads(json.dumps(cell.spec(), default=str)):
        return False
    return all(os.path.exists(os.path.join(cell.output_dir, f)) for f in PREDICTION_FILES)


def _write_marker(cell: Cell, info: Dict[str, Any]) -> None:
    from rcl_hf.atomic_io import atomic_write_bytes

    os.makedirs(cell.output_dir, exist_ok=True)
    text = json.dumps({**info, "cell_id": cell.cell_id, "spec": cell.spec()}, indent=2, default=str)
    atomic_write_bytes(os.path.join(cell.output_dir, DONE_FILE), text.encode("utf-8"))


def run_cell(cell: Cell, keep_models: bool = False) -> Dict[str, Any]:
    """Train one cell with :func:`rcl_hf.train_job.run_training`; write its done-marker; return a summary."""
    import transformers

    from rcl_hf.train_args import multiprocess_cpu_launch
    from rcl_hf.train_job import DataArguments, ModelArguments, default_training_args, run_training
    from .risk_variants import ExperimentRiskArguments

    transformers.logging.set_verbosity_error()
    t0 = time.time()
    rank, launched = _launch_rank()
    if launched == 1 and os.path.isdir(cell.output_dir):  # a half-finished earlier attempt: start clean
        shutil.rmtree(cell.output_dir)  # (under accelerate launch the launcher cleaned it, before any rank started)
    os.makedirs(cell.output_dir, exist_ok=True)
    training = dict(cell.training)
    if multiprocess_cpu_launch():  # several launched processes without CUDA: one gloo DDP job (as scripts/train.py)
        training["use_cpu"] = True
    training_args = default_training_args(cell.output_dir, seed=cell.seed, **training)
    # The Trainer's per-epoch logs go to the cell's train.log (train.rank<k>.log for the other launched ranks).
    log_name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    with open(os.path.join(cell.output_dir, log_name), "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        # a grid cell is scored from its logits: no out-of-distribution guard unless the grid asks for one
        # (a fine-tuned cell's guard embeds up to 500 training and all validation images again); not part of the spec
        model_args = {"ood_guard": False, **cell.model}
        result = run_training(ModelArguments(**model_args), DataArguments(**cell.data),
                              ExperimentRiskArguments(**cell.risk), training_args)
    if rank != 0:  # the main process cleans up and writes the done-marker
        return {"status": "done", "rank": rank}
    for entry in os.listdir(cell.output_dir):
        full = os.path.join(cell.output_dir, entry)
        if entry.startswith("checkpoint-") and os.path.isdir(full):
            shutil.rmtree(full, ignore_errors=True)
        elif not keep_models and entry.endswith((".safetensors", ".bin")):
            os.remove(full)
    missing = [f for f in PREDICTION_FILES if not os.path.exists(os.path.join(cell.output_dir, f))]
    if missing:
        raise RuntimeError(f"cell {cell.cell_id} finished without {missing}: the grid needs validation and test splits")
    info = {"status": "done", "wall_time_s": round(time.time() - t0, 2),
            "validation_cer": result.get("validation", {}).get("cer"), "test_cer": result.get("test", {}).get("cer")}
    _write_marker(cell, info)
    return info


def _launch_rank() -> Tuple[int, int]:
    """``(rank, processes)`` of this process under ``accelerate launch`` / ``torchrun``; ``(0, 1)`` otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _worker_init(threads: int) -> None:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


def _run_cell_safe(cell: Cell, keep_models: bool) -> Tuple[str, Optional[Dict[str, Any]], Optional[str]]:
    try:
        return cell.cell_id, run_cell(cell, keep_models), None
    except Exception:  # one failed cell must not stop the grid; its error is reported
        err = traceback.format_exc()
        if _launch_rank()[0] != 0:  # one marker per cell: the main process writes it
            return cell.cell_id, None, err
        try:
            _write_marker(cell, {"status": "failed", "error": err[-4000:]})
        except OSError:
            pass
        return cell.cell_id, None, err


def run_grid(
    grid: Grid,
    workers: int = 1,
    only: Optional[Sequence[str]] = None,
    progress: bool = True,
    cell_runner: Optional[Callable[[Cell, bool], Tuple[str, Optional[Dict[str, Any]], Optional[str]]]] = None,
    engine: Optional[Any] = None,
) -> Dict[str, Any]:
    """Run every cell that is not done; returns ``{"ran", "skipped", "failed": {id: error}, "logs": {id: log
    path of each failed cell}, "wall_time_s"}``.

    ``workers > 1`` runs cells in that many spawned processes (each with
    ``cpu_count // workers`` torch threads); ``workers = 1`` runs them in this
    process. ``engine`` (a :class:`research.executors.SubmititEngine`) runs each cell
    as a job instead (Slurm job arrays); ``workers`` is then unused. A tqdm bar counts cells
    (skipped ones included).
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    runner = cell_runner or _run_cell_safe
    cells = expand_cells(grid, only)
    todo = [c for c in cells if not is_done(c)]
    skipped = [c.cell_id for c in cells if c not in todo]
    by_id = {c.cell_id: c for c in cells}
    t0 = time.time()
    ran: List[str] = []
    failed: Dict[str, str] = {}
    logs: Dict[str, str] = {}
    bar = tqdm(total=len(cells), desc=f"{grid.name} cells", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    bar.update(len(skipped))

    def done(cell_id: str, info: Optional[Dict[str, Any]], err: Optional[str]) -> None:
        if err is None:
            ran.append(cell_id)
        else:
            failed[cell_id] = err
            logs[cell_id] = (engine.logs.get(cell_id) if engine is not None else None) or \
                os.path.join(by_id[cell_id].output_dir, "train.log")
            logger.error("cell %s failed (log: %s):\n%s", cell_id, logs[cell_id], err)
        bar.set_postfix(ran=len(ran), skipped=len(skipped), failed=len(failed), refresh=False)
        bar.update(1)

    def run(batch: Sequence[Cell], serial: bool = False) -> None:
        if engine is not None:  # one job per cell (one job array per batch)
            for result in engine.map(batch, grid.keep_models):
                done(*result)
        elif serial or workers == 1 or len(batch) <= 1:
            for cell in batch:
                bar.set_description(f"{grid.name}: {cell.cell_id}")
                done(*runner(cell, grid.keep_models))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                     initializer=_worker_init, initargs=(threads,)) as pool:
                futures = [pool.submit(runner, cell, grid.keep_models) for cell in batch]
                for fut in as_completed(futures):
                    done(*fut.result())

    if cell_runner is None:  # one backbone pass per embedding group, before the rest (locally: in this process)
        from .embed_pool import embedding_seed_cells, share_embeddings

        first = embedding_seed_cells(todo)
        run(first, serial=True)
        todo = [c for c in todo if c not in first]
        bar.set_description(f"{grid.name} cells")
        share_embeddings(grid.cells, todo, is_done)
    run(todo)
    bar.close()
    return {"ran": ran, "skipped": skipped, "failed": failed, "logs": logs, "wall_time_s": round(time.time() - t0, 2)}
