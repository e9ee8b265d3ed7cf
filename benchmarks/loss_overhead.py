"""Loss overhead: one training step with the risk-calibrated loss vs cross-entropy.

The target: ResNet-18 at 64 px, batch 32, the same model and batch in the
same run; the risk-calibrated step may take at most 2% longer (ratio <= 1.02).

A step is ``zero_grad -> forward -> loss -> backward -> AdamW step`` on the
model the Trainer trains (timm ``resnet18`` in ``TimmWrapperForImageClassification``,
built by :func:`rcl_hf.models.build_model`). Variants, interleaved step by step:

* ``ce``: ``torch.nn.functional.cross_entropy`` (what a plain transformers model
  computes from ``labels``);
* ``rcl``: :class:`rcl_hf.losses.RiskCalibratedLoss` (expected form, λ = 1) the way
  ``RiskCalibratedTrainer.compute_loss`` calls it: ``per_sample_parts`` then the
  mean, plus reading the base and risk means for logging;
* ``rcl_log``: the log-barrier form, same path;
* ``ce (A/A)``: ``ce`` again, last in each round: its ratio to ``ce`` shows how
  far two identical variants drift apart on this machine (the noise floor).

Whole-step medians are noisy on a loaded machine, so the loss alone (forward and
backward on the ``(batch, K)`` logits, the only work that differs) is also timed
in tight loops: ``1 + (loss_rcl - loss_ce) / step_ce`` is the overhead the step
ratio should show on a quiet machine.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

TARGET = 1.02


def _loss_variants(severity: Any) -> Dict[str, Callable]:
    import torch.nn.functional as F

    from rcl_hf.losses import RiskCalibratedLoss

    expected = RiskCalibratedLoss(severity, lam=1.0, form="expected")
    log = RiskCalibratedLoss(severity, lam=1.0, form="log")

    def trainer_path(loss_fn):
        def fn(logits, labels):
            parts = loss_fn.per_sample_parts(logits, labels)
            loss = parts["loss"].mean()
            # RiskCalibratedTrainer logs the parts: two host reads per step
            float(parts["base"].mean().detach())
            float(parts["risk"].mean().detach())
            return loss

        return fn

    def ce(logits, labels):
        return F.cross_entropy(logits.float(), labels)

    # "ce (A/A)" repeats ce as a fourth variant: its ratio to ce is the method's noise floor.
    return {"ce": ce, "rcl": trainer_path(expected), "rcl_log": trainer_path(log), "ce (A/A)": ce}


def run(quick: bool = False, real: bool = False, repeats: Optional[int] = None, **_: Any) -> Dict[str, Any]:
    import torch

    from benchmarks import interleave, make_ratio, stats
    from rcl_hf.models import build_model
    from rcl_hf.severity import SeverityMatrix

    image_size, batch = (32, 8) if quick else (64, 32)
    repeats = repeats or (3 if quick else 40)
    loss_calls = 50 if quick else 2000
    severity = SeverityMatrix.preset("brain_tumor_mri")
    torch.manual_seed(0)
    model, _ = build_model("resnet18", severity, image_size=image_size)
    model.train()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, severity.num_labels, (batch,), device=device)
    losses = _loss_variants(severity)  # the severity buffer follows the logits' device

    def step(loss_fn: Callable) -> Callable[[], None]:
        def go() -> None:
            optimizer.zero_grad(set_to_none=True)
            logits = model(pixel_values=x).logits
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return go

    step_times = interleave({name: step(fn) for name, fn in losses.items()}, repeats=repeats, warmup=2 if quick else 3)

    # The loss alone: forward + backward on (batch, K) logits; blocks of 25 calls per timing.
    logits0 = torch.randn(batch, severity.num_labels, device=device) * 3

    def loss_only(loss_fn: Callable) -> Callable[[], None]:
        def go() -> None:
            for _ in range(25):
                logits = logits0.detach().requires_grad_(True)
                loss_fn(logits, y).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return go

    block_times = interleave({name: loss_only(fn) for name, fn in losses.items()}, repeats=max(2, loss_calls // 25), warmup=2)
    step_stats = {k: stats(v) for k, v in step_times.items()}
    loss_us = {k: stats([t / 25 * 1e6 for t in v]) for k, v in block_times.items()}

    ce_ms = step_stats["ce"]["median"] * 1e3
    ratios = [
        make_ratio("step time, RCL (expected) vs CE", "rcl step ms", "ce step ms",
                   step_stats["rcl"]["median"] * 1e3, ce_ms, TARGET, "<=", "ms"),
        make_ratio("step time, RCL (log) vs CE", "rcl_log step ms", "ce step ms",
                   step_stats["rcl_log"]["median"] * 1e3, ce_ms, TARGET, "<=", "ms"),
        make_ratio("step time estimated from the loss alone, RCL vs CE", "ce step + extra loss time",
                   "ce step", ce_ms + (loss_us["rcl"]["median"] - loss_us["ce"]["median"]) / 1e3, ce_ms, TARGET, "<=", "ms"),
        make_ratio("A/A control: the same CE step timed as a fourth variant (noise floor)", "ce (A/A) step ms",
                   "ce step ms", step_stats["ce (A/A)"]["median"] * 1e3, ce_ms, None, "<=", "ms"),
    ]
    paired = [a / b for a, b in zip(step_times["rcl"], step_times["ce"])]
    rows = []
    for name in losses:
        s, ls = step_stats[name], loss_us[name]
        rows.append([name, s["median"] * 1e3, s["p10"] * 1e3, s["p90"] * 1e3, s["n"], batch / s["median"],
                     ls["median"], (ls["median"] - loss_us["ce"]["median"]) / ce_ms / 10])
    extra_pct = (loss_us["rcl"]["median"] - loss_us["ce"]["median"]) / (ce_ms * 1e3) * 100
    findings = [
        f"The loss itself: CE {loss_us['ce']['median']:.0f} us, RCL {loss_us['rcl']['median']:.0f} us, "
        f"RCL-log {loss_us['rcl_log']['median']:.0f} us per forward+backward on ({batch}, {severity.num_labels}) logits, "
        f"against a {ce_ms:.0f} ms step: the risk term adds {extra_pct:.2f}% of a step.",
        f"Whole-step ratio RCL/CE {ratios[0]['value']:.3f} (median of per-round paired ratios "
        f"{stats(paired)['median']:.3f}); its spread p10-p90 of the CE step is "
        f"{step_stats['ce']['p10'] * 1e3:.0f}-{step_stats['ce']['p90'] * 1e3:.0f} ms and the A/A control (CE vs CE) "
        f"reads {ratios[3]['value']:.3f}: step ratios closer to 1 than that are noise; the loss-alone estimate is the "
        "precise figure.",
    ]
    return {
        "benchmark": "loss_overhead",
        "title": f"Loss overhead: RCL vs cross-entropy, ResNet-18 at {image_size} px, batch {batch} ({device.type})",
        "config": {"model": "timm resnet18 (TimmWrapperForImageClassification)", "image_size": image_size,
                   "batch": batch, "classes": severity.num_labels, "optimizer": "AdamW", "repeats": repeats,
                   "device": device.type, "quick": quick},
        "ratios": ratios,
        "table": {"columns": ["loss", "step median ms", "p10 ms", "p90 ms", "n", "images/s",
                              "loss fwd+bwd us", "loss extra % of step"], "rows": rows},
        "findings": findings,
        "raw": {"step_s": step_times, "loss_block_s": block_times, "paired_step_ratio_rcl_ce": paired,
                "timestamp": time.time()},
    }
