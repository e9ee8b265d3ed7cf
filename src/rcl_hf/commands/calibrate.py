"""``rcl-calibrate`` (``scripts/calibrate.py``): give any image classifier a certified decision layer.

    rcl-calibrate --model runs/isic2018_rcl --dataset isic2018 --data_dir ../shared/data/isic2018_task3 \\
        --risk_kind critical_miss --risk_alpha 0.1 --risk_delta 0.1
    rcl-calibrate --model my-plain-trainer-model --dataset path/to/saved_datasetdict --severity isic2018 \\
        --output_dir my-model-calibrated

The model: a folder or Hub id (cache only, offline) saved by rcl_hf, by a plain ``transformers.Trainer``
(its config has no severity: give ``--severity``, a preset or JSON, matched to the model's labels by
name) or a timm model saved in the Hugging Face format. The data: any dataset ``scripts/train.py``
reads (an rcl_hf name with ``--data_dir``, a ``save_to_disk`` folder, ``--train_dir``/``--validation_dir``
class folders); the calibration split is ``--split`` (validation). The calibration is written into the
model folder, or into a copy at ``--output_dir``; the table printed says what was certified, and
``--eval_split test`` scores the certified layer once on another split.

    rcl-calibrate --model runs/isic2018_rcl --dataset isic2018 --data_dir DIR --plan true --risk_alpha 0.05

``--plan true`` writes nothing: it answers how many calibration units (lesions, patients or images) of each
critical class a certificate at ``--risk_alpha`` / ``--risk_delta`` needs, given the model's behaviour on
``--split`` at its decision layer's threshold (:mod:`rcl_hf.calibration.planner`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

__all__ = ["CalibrateArguments", "main"]


@dataclass
class CalibrateArguments:
    """What to calibrate and what to certify."""

    model: str = field(metadata={"help": "Model folder or Hub id (read from the local cache)."})
    severity: Optional[str] = field(default=None, metadata={"help": "Severity preset or JSON (default: the model's "
                                                                     "config, else the dataset's)."})
    split: str = field(default="validation", metadata={"help": "Calibration split (held out from training)."})
    eval_split: Optional[str] = field(default=None, metadata={"help": "Score the certified layer once on this split."})
    risk_kind: str = field(default="critical_miss", metadata={"help": "critical_miss or cer_accepted.",
                                                               "choices": ["critical_miss", "cer_accepted"]})
    risk_alpha: float = field(default=0.1, metadata={"help": "Certify risk <= risk_alpha ..."})
    risk_delta: float = field(default=0.1, metadata={"help": "... with probability >= 1 - risk_delta."})
    method: str = field(default="ltt", metadata={"help": "ltt (Learn then Test) or crc (conformal risk control).",
                                                  "choices": ["ltt", "crc"]})
    conditional: Optional[str] = field(default=None, metadata={
        "help": "'class': certify critical_miss for each critical-capable class too (per disease).",
        "choices": [None, "class"]})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Write into a copy of the model folder here."})
    batch_size: int = field(default=32, metadata={"help": "Images per forward pass."})
    seed: int = field(default=0, metadata={"help": "Seed of the tuning / certification split."})
    plan: bool = field(default=False, metadata={"help": "Write nothing; say how many calibration units of each "
                                                         "critical class the certificate needs."})


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from .args import one_line_errors, parse_args
    from ..train_args import DataArguments

    def go() -> dict:
        args, data_args = parse_args((CalibrateArguments, DataArguments), list(sys.argv[1:] if argv is None else argv))
        return run(args, data_args)

    return one_line_errors(go)


def run(args: CalibrateArguments, data_args) -> dict:
    import os

    import numpy as np

    from ..inference import forward_logits, load_model
    from ..train_data import load_data
    from ..formatting import RISK_TABLE_KEYS, format_table
    from ..calibration.fit import evaluate_calibration
    from ..calibration.model_folder import calibrate_folder

    dsd, dataset_severity = load_data(data_args)
    if args.split not in dsd:
        raise ValueError(f"the dataset has no {args.split!r} split (it has {list(dsd)}): pass --split")
    severity = args.severity
    if severity is None:
        from transformers import AutoConfig

        from ..models import SEVERITY_KEY

        try:  # the config alone says whether the model carries its own severity (no weights loaded twice)
            has_own = getattr(AutoConfig.from_pretrained(args.model), SEVERITY_KEY, None) is not None
        except OSError as err:
            raise ValueError(f"cannot read the config of {args.model!r}: {err}") from None
        if not has_own:
            if dataset_severity is None:
                raise ValueError("the model's config has no severity matrix and the dataset names none: "
                                 "pass --severity (a preset or a JSON file)")
            severity = dataset_severity
    train_groups = dsd["train"]["group_id"] if "train" in dsd and "group_id" in dsd["train"].column_names else None
    if args.plan:
        return _plan(args, dsd[args.split], severity)
    from ..data.metadata import dataset_metadata

    cal = calibrate_folder(args.model, dsd[args.split], severity=severity, out_dir=args.output_dir,
                           risk_kind=args.risk_kind, alpha=args.risk_alpha, delta=args.risk_delta, method=args.method,
                           conditional=args.conditional,
                           train_groups=train_groups, dataset=dataset_metadata(dsd).get("dataset") or data_args.dataset,
                           split_name=args.split, batch_size=args.batch_size, seed=args.seed)
    target = args.output_dir or args.model
    print(cal.certificate())
    print(f"(rule {cal.rule}, temperature {cal.temperature:.3f}, referral threshold {cal.threshold:.4g}; "
          f"written to {os.path.join(target, 'risk_calibration.json')})")
    out = {"calibration": cal.to_dict(), "model_dir": target}
    if args.eval_split:
        model = load_model(target, severity=severity)
        split = dsd[args.eval_split]
        z, _ = forward_logits(model, split["image"], batch_size=args.batch_size)
        labels = np.asarray(split["label"])
        names = split.features["label"].names
        labels = np.asarray([list(model.severity.labels).index(names[i]) for i in labels])
        out["eval"] = evaluate_calibration(cal, z, labels, model.severity)
        print("\n" + format_table({f"{args.eval_split} (certified layer)": out["eval"]}, RISK_TABLE_KEYS))
    return out


def _plan(args: CalibrateArguments, split, severity) -> dict:
    """``--plan``: the model's decision layer (its calibration, or one fitted here in memory) on the split, then
    :func:`rcl_hf.calibration.planner.plan_calibration`."""
    import numpy as np

    from ..calibration.fit import calibrate
    from ..calibration.planner import format_plan, plan_calibration
    from ..inference import forward_logits, load_model

    model = load_model(args.model, severity=severity)
    z, _ = forward_logits(model, split["image"], batch_size=args.batch_size)
    names = split.features["label"].names
    labels = np.asarray([list(model.severity.labels).index(names[i]) for i in split["label"]])
    groups = split["group_id"] if "group_id" in split.column_names else None
    cal = model.risk_calibration or calibrate(z, labels, model.severity, risk_kind=args.risk_kind, alpha=args.risk_alpha,
                                              delta=args.risk_delta, method=args.method, groups=groups, seed=args.seed)
    _, d, _, refer = cal.decide(z, model.severity)
    plan = plan_calibration(d, refer, labels, model.severity, args.risk_alpha, args.risk_delta, groups=groups)
    print(format_plan(plan, args.risk_alpha, args.risk_delta))
    return {"plan": plan}


if __name__ == "__main__":
    main()
