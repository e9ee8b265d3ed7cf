"""The main job: cross-entropy vs the risk-calibrated loss, each with the post-hoc rule, at matched accuracy.

``python scripts/main_job.py`` (= ``make main``, no arguments needed) does, on the embedded
synthetic dataset (:mod:`rcl_hf.data.synthetic`, generated once from ``data_seed``):

1. trains the same small network with cross-entropy (``ce``) and with the risk-calibrated loss
   (``rcl``; log form, λ = 1 by default) for every training seed — same data, epochs and batches —
   through :func:`rcl_hf.train_job.run_training`, the code path of ``scripts/train.py`` and of every
   cell of the experiment grid;
2. turns the saved validation/test logits into :class:`research.comparison.Run` objects and calls
   :func:`research.comparison.compare_pipelines`, i.e. the grid's own selection
   (:func:`rcl_hf.selection.select_operating_points`): for each pipeline family (``ce``,
   ``ce + Bayes``, ``ce + blend``, ``rcl``, ...) the operating point (blend weight ``w``) with the
   lowest *validation* CER among those within ``tolerance`` of cross-entropy's validation accuracy,
   then one evaluation on test;
3. decides the headline question — does ``rcl + blend`` make fewer critical errors than
   ``ce + blend``? — from the 95% CI of the paired test-CER difference (two-level bootstrap over
   seeds and test images, :func:`research.comparison.stats.bootstrap_replicates`, same draws for both
   pipelines) and writes the verdict paragraph from those numbers (:func:`verdict`);
4. beside it, the certified decision layer that each run calibrated on its validation split
   (:mod:`rcl_hf.calibration`), scored once on test (:func:`certified_table`): coverage, realised risk,
   accuracy among the accepted cases, and whether the certified bound held;
5. writes ``comparison.md`` (the table and verdict it prints), ``comparison.json``,
   ``cer_accuracy.png`` (the CER–accuracy fronts, :func:`research.comparison.figures.plot_fronts`)
   and one model folder per run: ``ce`` and ``rcl`` (first seed; loadable with
   ``rcl_hf.load_model``), ``ce_seed1``, ``rcl_seed1``, ... Each run folder has ``train.log``
   with the Trainer's per-step logs (``--verbose true`` prints them instead).

Reproducibility: each run's torch uses ``threads`` intra-op threads (default 1), ``parallel_runs`` runs (default
2, one per core) train side by side in spawned processes, augmentation is seeded per image and epoch, and the data
are generated
from a seed, so the same machine kind with the same library versions prints the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rcl_hf.formatting import pct as _pct
from rcl_hf.formatting import pct_ci as _ci
from rcl_hf.run_files import RESULTS_FILE, RUN_FILE

from .comparison.verdict import headline_verdict as verdict

__all__ = ["CompareArguments", "run_comparison", "verdict", "matched_table", "certified_table", "run_folder", "main"]

DATASET_NAME = "synthetic"
METHODS = ("ce", "rcl")
HEADLINE = ("ce + blend", "rcl + blend")


@dataclass
class CompareArguments:
    """The main job's knobs; every run gets the same data, epochs and batch size."""

    output_dir: str = field(default="runs/main", metadata={"help": "Where runs and the comparison go."})
    rcl_loss: str = field(default="rcl_log", metadata={"help": "Loss of the risk-calibrated runs (rcl, rcl_log, rcl_focal)."})
    lam: float = field(default=1.0, metadata={"help": "λ of the risk-calibrated loss."})
    backbone: str = field(default="hf-resnet", metadata={"help": "Backbone (see scripts/train.py --help)."})
    pretrained: Optional[str] = field(default=None, metadata={"help": "Offline weights, e.g. efficientnet-lite0-package."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Train only the head on cached embeddings."})
    dataset: str = field(default=DATASET_NAME, metadata={"help": "'synthetic' (generated), a registered loader, a save_to_disk folder."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Raw data folder for a registered loader."})
    image_size: int = field(default=32, metadata={"help": "Input size in pixels."})
    n_train: int = field(default=2400, metadata={"help": "Synthetic training images."})
    n_validation: int = field(default=1500, metadata={"help": "Synthetic validation images (selection reads only these)."})
    n_test: int = field(default=3000, metadata={"help": "Synthetic test images (scored once per chosen pipeline)."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the data (the same images for every run)."})
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds (verdict: mean over them)."})
    epochs: float = field(default=4.0, metadata={"help": "Training epochs of each run."})
    batch_size: int = field(default=64, metadata={"help": "Per-device batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate training data (tests)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate evaluation data (tests)."})
    tolerance: float = field(default=0.01, metadata={"help": "Matched = validation accuracy ≥ CE's − tolerance."})
    risk_kind: str = field(default="critical_miss", metadata={"help": "Risk each run's decision layer certifies on validation.",
                                                               "choices": ["critical_miss", "cer_accepted"]})
    risk_alpha: float = field(default=0.1, metadata={"help": "Certified level α of that risk."})
    risk_delta: float = field(default=0.1, metadata={"help": "Confidence 1 − δ of the certificate."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap replicates of the CIs."})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads, pinned (the numbers depend on it); 1 is the fastest on a busy machine."})
    parallel_runs: int = field(default=2, metadata={"help": "Training runs side by side, each in its own process with `threads` threads (the results do not depend on it)."})
    loader_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per run (image decoding and augmentation beside the training thread)."})
    verbose: bool = field(default=False, metadata={"help": "Print the Trainers' per-step logs instead of writing them to train.log."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar too."})


def run_folder(output_dir: str, method: str, seed: int, first_seed: int) -> str:
    """``<output_dir>/<method>`` for the first seed (the model README loads), ``<method>_seed<k>`` otherwise."""
    return os.path.join(output_dir, method if seed == first_seed else f"{method}_seed{seed}")


# ----------------------------------------------------------------------------- the table
def matched_table(summary: Any, families: Sequence[str]) -> str:
    """Markdown table of the chosen pipelines (rows of ``compare_pipelines(...).summary``), rates in percent."""
    head = ("| pipeline | chosen on validation | val. accuracy % | test accuracy % [95% CI] | test CER % [95% CI] "
            "| critical errors per seed | matched |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for fam in families:
        rows = summary[summary["family"] == fam]
        if rows.empty:
            continue
        r = rows.iloc[0]
        point = str(r["point"]).split("|")[-1] if "|" in str(r["point"]) else "argmax"
        name = f"**{fam}**" if fam in HEADLINE else fam
        lines.append(f"| {name} | {point} | {_pct(r['val_accuracy'])} | {_pct(r['accuracy'])} {_ci(r.get('accuracy_ci'))} "
                     f"| {_pct(r['cer'])} {_ci(r.get('cer_ci'))} | {np.mean(r['n_critical_seeds']):.1f} "
                     f"| {'yes' if r['matched'] else 'no'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running
@contextlib.contextmanager
def _quiet(log_path: str, verbose: bool):
    """Send the Trainer's prints, progress bars, warnings and library logs of one run to ``log_path``."""
    if verbose:
        yield
        return
    import transformers

    tlog = transformers.logging
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("rcl_hf", "datasets", "accelerate")]
    old_verbosity = tlog.get_verbosity()
    tlog.disable_default_handler()
    tlog.add_handler(handler)
    tlog.set_verbosity_info()
    saved = [(lg, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        with open(log_path, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            yield
    finally:
        tlog.remove_handler(handler)
        tlog.enable_default_handler()
        tlog.set_verbosity(old_verbosity)
        for lg, prop in saved:
            lg.removeHandler(handler)
            lg.propagate = prop
        handler.close()


def _prepare_folder(path: str) -> None:
    """Start a run folder clean; refuse to delete a folder that is not a run of this job."""
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.exists(os.path.join(path, RUN_FILE)) and not os.path.exists(os.path.join(path, "train.log")):
            raise ValueError(f"{path} exists and is not a run of the main job; choose another --output_dir")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)


def _data_arguments(args: CompareArguments):
    """The dataset every run reads: the synthetic default is generated once into ``<output_dir>/data``."""
    from rcl_hf.train_job import DataArguments

    common = dict(max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples, cache_dir="none")
    if args.dataset != DATASET_NAME:
        return DataArguments(dataset=args.dataset, data_dir=args.data_dir, split_seed=args.data_seed, **common)
    from rcl_hf.data.synthetic import load_synthetic

    folder = os.path.join(args.output_dir, "data")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    with _quiet(os.path.join(args.output_dir, "data.log"), args.verbose):
        load_synthetic(seed=args.data_seed, n_train=args.n_train, n_validation=args.n_validation, n_test=args.n_test,
                       image_size=args.image_size).save_to_disk(folder)
    return DataArguments(dataset=folder, split_seed=args.data_seed, augmentation="flip", **common)


def _train_one(args: CompareArguments, data_args: Any, method: str, seed: int, run_dir: str) -> Dict[str, Any]:
    from rcl_hf.train_job import ModelArguments, default_training_args, run_training
    from rcl_hf.trainer import RiskArguments

    training_args = default_training_args(
        run_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256, learning_rate=args.learning_rate, weight_decay=0.05, warmup_steps=0.05,
        seed=seed, disable_tqdm=not args.verbose, logging_steps=20, dataloader_num_workers=args.loader_workers,
        dataloader_persistent_workers=args.loader_workers > 0,
        log_level="info" if args.verbose else "passive",
        # The final weights are scored: no per-epoch evaluation or checkpoint (validation is read once, by the
        # selection, as in the grid's cells; and it halves the time of a run).
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
    )
    risk = RiskArguments(loss="ce") if method == "ce" else RiskArguments(loss=args.rcl_loss, lam=args.lam)
    with _quiet(os.path.join(run_dir, "train.log"), args.verbose):
        result = run_training(
            ModelArguments(backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size,
                           freeze_backbone=args.freeze_backbone, risk_kind=args.risk_kind, risk_alpha=args.risk_alpha,
                           risk_delta=args.risk_delta),
            data_args, risk, training_args)
    for entry in os.listdir(run_dir):  # the best model sits at the folder's root; checkpoints are not needed
        if entry.startswith("checkpoint-"):
            shutil.rmtree(os.path.join(run_dir, entry), ignore_errors=True)
    return result


def _train_and_load(args: CompareArguments, data_args: Any, method: str, seed: int, run_dir: str, point: str):
    """One run, start to finish (also the unit of work of a ``--parallel_runs`` worker process)."""
    import torch

    torch.set_num_threads(args.threads)
    _prepare_folder(run_dir)
    _train_one(args, data_args, method, seed, run_dir)
    return _load_run(run_dir, method, seed, args.backbone, point)


def _load_run(run_dir: str, method: str, seed: int, backbone: str, point: str):
    from .comparison import load_run_folder

    return load_run_folder(run_dir, DATASET_NAME, backbone, method, point, seed)


def certified_table(output_dir: str, seeds: Sequence[int], kind: str, alpha: float, delta: float) -> Tuple[str, Dict[str, Any]]:
    """The certified decision layer of every run (calibrated on its validation split by ``run_training``),
    scored once on test: mean coverage, realised risk and accuracy among the accepted cases per loss,
    and in how many runs the certified bound held on test."""
    rows: Dict[str, Any] = {}
    for method in METHODS:
        tests = []
        for seed in seeds:
            with open(os.path.join(run_folder(output_dir, method, seed, seeds[0]), RESULTS_FILE), encoding="utf-8") as fh:
                rc = json.load(fh).get("risk_control", {})
            if "test" not in rc:  # e.g. a validation split too small to certify α: said, not hidden
                return f"No certified decision layer for run {method} seed {seed}: {rc.get('error', 'not calibrated')}", {}
            tests.append(rc["test"])
        rows[method] = {k: float(np.mean([t[k] for t in tests])) for k in ("coverage", kind, "accuracy_accepted", "accuracy")}
        rows[method]["held"] = int(sum(t[kind] <= alpha for t in tests))
    lines = [f"Certified decision layer ({kind} ≤ {alpha:.0%} at {1 - delta:.0%} confidence, calibrated on each run's "
             f"validation split: temperature, rule, Learn-then-Test referral threshold), scored once on test; means over "
             f"{len(seeds)} seeds:", "",
             f"| loss | coverage % | test {kind} % | accuracy among accepted % | accuracy of all decisions % | bound held on test |",
             "|---|---|---|---|---|---|"]
    for method, r in rows.items():
        lines.append(f"| {method} | {100 * r['coverage']:.2f} | {100 * r[kind]:.2f} | {100 * r['accuracy_accepted']:.2f} | "
                     f"{100 * r['accuracy']:.2f} | {r['held']} of {len(seeds)} runs |")
    return "\n".join(lines), rows


def _headline(comparison: Any, n_boot: int) -> Dict[str, Any]:
    """Paired bootstrap (same seed and image draws) of ``rcl + blend`` minus ``ce + blend``."""
    from .comparison import bootstrap_replicates

    (group,) = comparison.severities.keys()
    sev = comparison.severities[group]
    summ = comparison.summary
    reps = {f: bootstrap_replicates(comparison.samples[(*group, f)], sev, n_boot, 0) for f in HEADLINE}
    out: Dict[str, Any] = {"cer": {}, "accuracy": {}}
    for f in HEADLINE:
        row = summ[summ["family"] == f].iloc[0]
        out["cer"][f], out["accuracy"][f] = float(row["cer"]), float(row["accuracy"])
        out.setdefault("matched", {})[f] = bool(row["matched"])
    for key in ("cer", "accuracy"):
        diff = reps[HEADLINE[1]][key] - reps[HEADLINE[0]][key]
        out[f"{key}_diff_ci"] = tuple(float(q) for q in np.quantile(diff, [0.025, 0.975]))
    sample = comparison.samples[(*group, HEADLINE[0])]
    out["n_seeds"], out["n_test"] = int(sample.num_seeds), int(sample.labels.shape[0])
    return out


def run_comparison(args: CompareArguments) -> Dict[str, Any]:
    """Train, select on validation, score on test; returns the summary (``header``, ``table``, ``verdict``...)."""
    import torch
    from tqdm.auto import tqdm

    from .comparison import compare_pipelines
    from .comparison.figures import plot_fronts
    from rcl_hf.decision import DEFAULT_BLEND_WEIGHTS

    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct integers, got {args.seeds}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.parallel_runs < 1:
        raise ValueError(f"--parallel_runs must be >= 1, got {args.parallel_runs}")
    if not args.rcl_loss.startswith("rcl"):
        raise ValueError(f"--rcl_loss must be a risk-calibrated loss (rcl, rcl_log, ...), got {args.rcl_loss!r}")
    t0 = time.time()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    data_args = _data_arguments(args)
    point = {"ce": "default", "rcl": f"lam={args.lam:g}"}
    jobs = [(m, s) for s in args.seeds for m in METHODS]
    bar = tqdm(total=len(jobs), desc="main job", unit="run", file=sys.stderr, dynamic_ncols=True,
               disable=args.disable_tqdm or args.verbose)
    bar.set_postfix_str(f"training {len(jobs)} runs, {min(args.parallel_runs, len(jobs))} at a time "
                        f"(logs: <run>/train.log)")
    calls = [(args, data_args, m, s, run_folder(args.output_dir, m, s, args.seeds[0]), point[m]) for m, s in jobs]
    if args.parallel_runs > 1 and len(jobs) > 1:
        # spawn: fresh interpreters with the pinned thread count (a forked torch would inherit its pools)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(args.parallel_runs, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(_train_and_load, *c) for c in calls]
            for _ in as_completed(futures):
                bar.update(1)
            runs = [f.result() for f in futures]  # job order, whatever order they finished in
    else:
        runs = []
        for c in calls:
            runs.append(_train_and_load(*c))
            bar.update(1)
    bar.set_postfix_str("selecting on validation, scoring on test")
    comparison = compare_pipelines(runs, DEFAULT_BLEND_WEIGHTS, reference="ce", tolerance=args.tolerance,
                                   n_boot=args.n_boot)
    head = _headline(comparison, args.n_boot)
    label, text = verdict(head["cer"], head["accuracy"], head["cer_diff_ci"], head["accuracy_diff_ci"],
                          head["n_seeds"], head["n_test"], matched=head["matched"])
    plot_fronts(comparison, DATASET_NAME, args.backbone, os.path.join(args.output_dir, "cer_accuracy.png"))
    bar.close()
    families = ["ce", "ce + Bayes", "ce + blend", "rcl", "rcl + Bayes", "rcl + blend"]
    table = matched_table(comparison.summary, families)
    elapsed = time.time() - t0
    sizes = {s: int(len(runs[0].labels[k])) for s, k in (("validation", "val"), ("test", "test"))}
    header = (f"Main job (`make main` = `python scripts/main_job.py`): {args.dataset} data (seed {args.data_seed}; "
              f"validation {sizes['validation']}, test {sizes['test']} images), backbone {args.backbone} at "
              f"{args.image_size} px, {args.epochs:g} epochs, `ce` vs `rcl` = {args.rcl_loss} λ = {args.lam:g}, "
              f"training seeds {args.seeds}, {args.threads} torch threads. Each pipeline's operating point is chosen on "
              f"validation (lowest CER within {100 * args.tolerance:g} point of CE's accuracy; blend rule "
              f"w ∈ [0, 1], w = 0 argmax, w = 1 Bayes-risk rule), then scored once on test; means over seeds, 95% CIs "
              f"from a bootstrap over seeds and test images. Wall time {elapsed:.0f} s.\n\n")
    certified, certified_rows = certified_table(args.output_dir, args.seeds, args.risk_kind, args.risk_alpha, args.risk_delta)
    text = text + "\n\n" + certified
    with open(os.path.join(args.output_dir, "comparison.md"), "w", encoding="utf-8") as fh:
        fh.write(header + table + "\n\n" + text + "\n")
    summary = {"arguments": asdict(args), "verdict": label, "verdict_text": text, "headline": head,
               "certified": certified_rows,
               "rows": {f: {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool))}
                        for f, r in ((r["family"], r) for r in comparison.summary.to_dict(orient="records"))},
               "wall_time_s": round(elapsed, 1), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    with open(os.path.join(args.output_dir, "comparison.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=float)
    summary.update(table=table + "\n\n" + text, header=header, comparison=comparison)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``scripts/main_job.py``: parse the flags, run, print the table and the verdict."""
    from rcl_hf.commands.args import one_line_errors, parse_args

    def go():
        (args,) = parse_args((CompareArguments,), argv)
        summary = run_comparison(args)
        print("\n" + summary["header"] + summary["table"])
        logs = "" if args.verbose else ", each with its train.log"
        print(f"\nRuns (ce, rcl, ...{logs}), comparison.md/.json and cer_accuracy.png in {args.output_dir}")
        return summary

    return one_line_errors(go)
