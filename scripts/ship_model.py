#!/usr/bin/env python
"""Turn a finished training run into a shipped model: the Hub-layout folder that ``models/`` holds, the Space serves
and a push uploads.

    python scripts/train.py configs/cpu/brain_tumor_mri.yaml --output_dir runs/brain_tumor_mri_cpu
    python scripts/ship_model.py runs/brain_tumor_mri_cpu --repo_id rcl-hf/brain-tumor-mri-efficientnet-lite0

Steps, all on the images a user feeds (the original files through :func:`rcl_hf.inference.forward_logits`, not the
training run's resized cache):

1. rebuild the run's grouped validation and test splits from its ``rcl_run.json`` and save the model's logits on
   them as ``validation_predictions.npz`` / ``test_predictions.npz`` (logits, labels, group ids): what the shipped
   folder's predictions are checked against, and what a user recalibrates from;
2. write the Space's calibrations at each offered target risk (``risk_calibrations/alpha-*.json``,
   :func:`rcl_hf.space.certified.save_alpha_calibrations`) with the options of the run's own
   ``risk_calibration.json`` (risk, δ, unit, per-class certificate), check that the one at the run's α is the
   run's calibration (same temperature and threshold) and save it as the run's, in the current schema;
3. run the acceptance check (``scripts/check_model.py``: ``check.md`` / ``check.json``, per class, group bootstrap);
4. write the upload folder with its model card (:func:`rcl_hf.hub.prepare_model_folder`, the dry run of a push)
   into ``--out`` (default ``models/<name of the id>``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def save_original_predictions(run: Path, data_dir: Optional[str] = None) -> dict:
    """Step 1: the model's logits on the original validation / test images, saved beside the run; returns the
    splits ``{"train", "validation", "test"}``."""
    from rcl_hf.inference import forward_logits, load_model
    from rcl_hf.run_files import predictions_file
    from rcl_hf.train_args import DataArguments
    from rcl_hf.train_data import load_data, run_splits

    recipe = json.loads((run / "rcl_run.json").read_text(encoding="utf-8"))
    data_args = DataArguments(dataset=recipe["dataset"], data_dir=data_dir or recipe["data_dir"],
                              split_seed=recipe["split_seed"])
    splits = run_splits(load_data(data_args)[0], data_args)
    model = load_model(str(run))
    for name in ("validation", "test"):
        split = splits[name]
        if len(split) != recipe["split_sizes"][name]:
            raise SystemExit(f"the rebuilt {name} split has {len(split)} images, the run's had {recipe['split_sizes'][name]}")
        logits, _ = forward_logits(model, split["image"])
        extra = {"groups": np.asarray([str(g) for g in split["group_id"]], dtype=str)} if "group_id" in split.column_names else {}
        np.savez(run / predictions_file(name), logits=logits, labels=np.asarray(split["label"]), **extra)
        print(f"saved {predictions_file(name)}: {len(split)} images")
    return splits


def save_offered_calibrations(run: Path, splits: dict) -> None:
    """Step 2, with the run's own calibration options; the level of the run's α must reproduce the run's threshold."""
    from rcl_hf.calibration import RiskCalibration
    from rcl_hf.models import severity_from_config
    from rcl_hf.space.certified import SPACE_ALPHAS, alpha_file, save_alpha_calibrations
    from transformers import AutoConfig

    main = RiskCalibration.load(run)
    if main is None:
        raise SystemExit(f"{run} has no risk_calibration.json: train with calibration on (the default)")
    recipe = json.loads((run / "rcl_run.json").read_text(encoding="utf-8"))
    grouped = all("group_id" in splits[s].column_names for s in ("train", "validation"))
    alphas = sorted(set(SPACE_ALPHAS) | {float(main.alpha)})
    written = save_alpha_calibrations(
        str(run), severity_from_config(AutoConfig.from_pretrained(run)), alphas, risk_kind=main.risk_kind,
        delta=main.delta, groups=splits["validation"]["group_id"] if grouped else None,
        train_groups=splits["train"]["group_id"] if grouped else None, dataset=recipe.get("dataset_name"),
        seed=recipe.get("seed", 0), conditional=main.conditional, method=main.method, p_value=main.p_value)
    same = RiskCalibration.load(alpha_file(run, float(main.alpha)))
    if same is None or not np.isclose(same.threshold, main.threshold) or not np.isclose(same.temperature, main.temperature):
        raise SystemExit(f"the calibration at α = {main.alpha} does not reproduce the run's risk_calibration.json")
    same.save(run)  # the run's calibration in the current schema (e.g. with the score band the drift check reads)
    print("saved calibrations at α = " + ", ".join(f"{a:g}" for a in sorted(written)))


def main(argv: Optional[Sequence[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder written by scripts/train.py")
    p.add_argument("--repo_id", required=True, help="the Hub id, e.g. rcl-hf/brain-tumor-mri-efficientnet-lite0")
    p.add_argument("--out", help="the shipped folder (default: models/<name of the id>)")
    p.add_argument("--data_dir", help="the dataset folder (default: the one in the run's rcl_run.json)")
    args = p.parse_args(argv)
    from rcl_hf.hub import prepare_model_folder

    run = Path(args.run)
    splits = save_original_predictions(run, args.data_dir)
    save_offered_calibrations(run, splits)
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_model

    check_model.main([str(run)] + (["--data_dir", args.data_dir] if args.data_dir else []))
    out = Path(args.out or ROOT / "models" / args.repo_id.split("/")[-1])
    prepare_model_folder(run, out, args.repo_id, overwrite=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"shipped {args.repo_id} in {out} ({size / 2**20:.1f} MiB)")
    return out


if __name__ == "__main__":
    main()
