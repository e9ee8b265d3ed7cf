"""CER at fixed coverage of trained abstention (:mod:`.abstention`) against the referral rule on CE, on the
cached frozen-backbone embeddings of a grid's split seeds, every choice on validation::

    python -m research.abstention_report research/configs/symmetric_comparison_frozen_isic.yaml \\
        --out research/results/symmetric_comparison_frozen_isic/abstention

Needs the embedding cache of every split seed (written by the grid's frozen-backbone cells). Writes
``abstention.csv``, ``abstention.json`` and ``README.md`` (the table, the command and a verdict per
coverage generated from the paired split × seed × image bootstrap).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from rcl_hf.atomic_io import atomic_write_bytes, atomic_write_text
from .abstention import FAMILIES, AbstentionConfig, choose, options, selective_outcomes, train_head
from .clustered import paired_clustered_bootstrap
from .comparison.verdict import comparison_sentence
from rcl_hf.formatting import pct as _pct

__all__ = ["run_abstention", "verdict", "main"]


def _reference_cells(grid, method: str) -> Dict[int, Any]:
    """One frozen-backbone cell of ``method`` per split seed (its model/data arguments locate the cache)."""
    cells = {}
    for c in grid.cells:
        if c.method == method and c.model.get("freeze_backbone") and c.split_seed is not None:
            cells.setdefault(int(c.split_seed), c)
    if not cells:
        raise ValueError(f"the grid has no frozen-backbone {method!r} cells with split seeds")
    return cells


def run_abstention(grid, coverages: Sequence[float] = (0.9, 0.8), config: AbstentionConfig = AbstentionConfig(),
                   splits: Optional[Sequence[int]] = None, seeds: Optional[Sequence[int]] = None,
                   n_boot: int = 2000, progress: bool = True, threads: int = 1) -> Tuple[pd.DataFrame, Dict[str, Any]]:
    """Train every family on every (split seed, training seed), choose each family's (ranking, decision) on
    validation, score test once; compare each family with ``ce`` at each coverage (module docstring).

    ``threads``: torch's intra-op threads while the heads train (restored afterwards). The order of float sums,
    and with it the SelectiveNet heads at 80% coverage, depends on it; the summary records it."""
    import torch

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        table, summary = _run_abstention(grid, coverages, config, splits, seeds, n_boot, progress)
    finally:
        torch.set_num_threads(before)
    summary["torch_threads"] = threads
    return table, summary


def _run_abstention(grid, coverages, config, splits, seeds, n_boot, progress) -> Tuple[pd.DataFrame, Dict[str, Any]]:
    from tqdm.auto import tqdm

    from rcl_hf.train_job import DataArguments, ModelArguments
    from .embed_pool import load_split_embeddings

    refs = _reference_cells(grid, "ce")
    splits = sorted(refs) if splits is None else list(splits)
    seeds = sorted({c.seed for c in grid.cells}) if seeds is None else list(seeds)
    # outcomes[(family, coverage, option)][split] -> {"validation": [...], "test": [...]} over seeds
    outcomes: Dict[Tuple, Dict[int, Dict[str, List[Dict[str, np.ndarray]]]]] = {}
    bar = tqdm(total=len(splits) * len(seeds), desc="abstention heads", disable=not progress)
    for split in splits:
        cell = refs[split]
        emb, severity = load_split_embeddings(ModelArguments(**cell.model), DataArguments(**cell.data))
        x_tr, y_tr = emb["train"]
        for seed in seeds:
            for family, selective in FAMILIES:
                for i, cov in enumerate(coverages):
                    if selective is not None or i == 0:  # the CE head is one model for every coverage
                        predict = train_head(x_tr, y_tr, severity, selective, coverage=cov, seed=seed, config=config)
                        preds = {part: predict(emb[part][0]) for part in ("validation", "test")}
                    for opt in options(family):
                        per = outcomes.setdefault((family, cov, opt), {}).setdefault(
                            split, {"validation": [], "test": []})
                        for part, (z, g) in preds.items():
                            per[part].append(selective_outcomes(z, g, emb[part][1], severity, cov, *opt))
            bar.update(1)
    bar.close()
    rows, summary = [], {"coverages": list(coverages), "splits": splits, "seeds": seeds,
                         "config": config.__dict__, "comparisons": []}
    chosen: Dict[Tuple[str, float], Tuple[str, str]] = {}
    samples: Dict[Tuple[str, float], Dict[int, Dict[str, np.ndarray]]] = {}
    for family, _ in FAMILIES:
        for cov in coverages:
            val = {opt: [o["critical"].mean() for sp in outcomes[(family, cov, opt)].values() for o in sp["validation"]]
                   for opt in options(family)}
            opt = choose(val)
            chosen[(family, cov)] = opt
            samples[(family, cov)] = {
                sp: {m: np.stack([o[m] for o in v["test"]]) for m in ("critical", "correct")}
                for sp, v in outcomes[(family, cov, opt)].items()}
            rows.append({"family": family, "coverage": cov, "ranking": opt[0], "decision": opt[1],
                         "val_selective_cer": float(np.mean(val[opt]))})
    for r in rows:
        a = samples[(r["family"], r["coverage"])]
        c = paired_clustered_bootstrap(a, samples[("ce", r["coverage"])], n_boot=n_boot)
        r.update(test_selective_cer=c["cer_a"], test_selective_cer_ci=c["cer_a_ci"],
                 test_selective_accuracy=c["accuracy_a"], cer_diff_vs_ce=c["cer_diff"],
                 cer_diff_vs_ce_ci=c["cer_diff_ci"], relative_reduction_vs_ce=c["relative_reduction"],
                 relative_reduction_vs_ce_ci=c["relative_reduction_ci"], accuracy_diff_vs_ce=c["accuracy_diff"],
                 n_runs=sum(len(v["critical"]) for v in a.values()), n_splits=len(a))
        if r["family"] != "ce":
            summary["comparisons"].append({"family": r["family"], "coverage": r["coverage"], "verdict": verdict(r)})
    return pd.DataFrame(rows), summary


def verdict(row: Dict[str, Any]) -> str:
    """The sentence that follows from the paired bootstrap CI of the selective-CER difference against ce."""
    lo, hi = row["cer_diff_vs_ce_ci"]
    fam, cov = row["family"], f"{row['coverage']:.0%}"
    nums = (f"{_pct(row['test_selective_cer'])} vs ce referral {_pct(row['test_selective_cer'] - row['cer_diff_vs_ce'])}"
            f", difference {_pct(row['cer_diff_vs_ce'])} [{_pct(lo)}, {_pct(hi)}]")
    return comparison_sentence(fam, "the referral rule on ce", (lo, hi), nums, where=f" at {cov} coverage")


def _write(out: str, table: pd.DataFrame, summary: Dict[str, Any], command: str) -> None:
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "abstention.csv"), table.to_csv(index=False))
    atomic_write_bytes(os.path.join(out, "abstention.json"),
                       json.dumps({**summary, "rows": table.to_dict("records"), "command": command}, indent=2,
                                  default=str).encode("utf-8"))
    lines = ["# Trained cost-aware abstention vs the referral rule on CE", "",
             "Generated by `research.abstention_report` (see `research/abstention.py` for the "
             "method). Every family's ranking (expected cost of the decision, or SelectiveNet's selector g) and "
             "decision rule (argmax / Bayes) is chosen on validation; test is read once. Selective CER = critical "
             "errors among the decided images; CIs: paired bootstrap over split seeds × training seeds × images.",
             "", f"Splits {summary['splits']} × training seeds {summary['seeds']}, heads trained with "
             f"{summary['torch_threads']} torch thread(s). Command:", "",
             f"    {command}", "",
             "| family | coverage | ranking | decision | val sel. CER | test sel. CER [95% CI] | test sel. accuracy "
             "| vs ce: difference [95% CI] | relative [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lo, hi = r["cer_diff_vs_ce_ci"]
        rlo, rhi = r["relative_reduction_vs_ce_ci"]
        cmp = "—" if r["family"] == "ce" else f"{_pct(r['cer_diff_vs_ce'])} [{_pct(lo)}, {_pct(hi)}]"
        rel = "—" if r["family"] == "ce" else f"{_pct(r['relative_reduction_vs_ce'], 1)} [{_pct(rlo, 1)}, {_pct(rhi, 1)}]"
        clo, chi = r["test_selective_cer_ci"]
        lines.append(f"| {r['family']} | {r['coverage']:.0%} | {r['ranking']} | {r['decision']} | "
                     f"{_pct(r['val_selective_cer'])} | {_pct(r['test_selective_cer'])} [{_pct(clo)}, {_pct(chi)}] | "
                     f"{_pct(r['test_selective_accuracy'])} | {cmp} | {rel} |")
    lines += ["", "Verdicts (generated from the CIs):", ""] + [f"- {c['verdict']}" for c in summary["comparisons"]]
    atomic_write_text(os.path.join(out, "README.md"), "\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .grid import load_grid

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="grid YAML with frozen-backbone 'ce' cells and split_seeds")
    ap.add_argument("--out", required=True, help="folder for abstention.csv / .json / README.md")
    ap.add_argument("--coverages", type=float, nargs="+", default=[0.9, 0.8])
    ap.add_argument("--n_boot", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=AbstentionConfig.epochs)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads while the heads train (the SelectiveNet heads' float sums depend on it)")
    args = ap.parse_args(argv)
    t0 = time.time()
    grid = load_grid(args.grid)
    table, summary = run_abstention(grid, args.coverages, AbstentionConfig(epochs=args.epochs), n_boot=args.n_boot,
                                    threads=args.threads)
    summary["wall_time_s"] = round(time.time() - t0, 1)
    command = "python -m research.abstention_report " + shlex.join(argv if argv is not None else sys.argv[1:])
    _write(args.out, table, summary, command)
    print(open(os.path.join(args.out, "README.md"), encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
