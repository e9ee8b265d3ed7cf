"""Losses: values and gradients against an independent numpy reference, lam=0 identity,
build_loss, class weights, and numerical stability at logits of +-1e4 (fp32, bf16)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rcl_hf import SeverityMatrix
from rcl_hf.losses import (
    LOSS_NAMES,
    WeightedCrossEntropyLoss,
    FocalLoss,
    RiskCalibratedLoss,
    build_loss,
    class_weights,
)

SEV = SeverityMatrix.preset("brain_tumor_mri")
M = SEV.matrix
WEIGHTS = np.array([0.5, 2.0, 1.0, 1.5])


# --------------------------------------------------------------------------- reference
def reference_loss(z, y, matrix=None, lam=0.0, form="expected", base="ce", gamma=2.0, ls=0.0, weight=None, eps=1e-6):
    """The docs/loss.md formula, sample by sample, in plain float64 numpy.

    L_n = w_{y_n} * B_n + lam * R_n;  B_n = -sum_k q_k (1 - p_k)^g log p_k  (g = 0 for CE);
    R_n = sum_j M[y_n, j] p_j  (expected)  or  -sum_j M[y_n, j] log(1 - p_j + eps)  (log).
    """
    z = np.asarray(z, dtype=np.float64)
    total = 0.0
    for zn, yn in zip(z, y):
        k = len(zn)
        p = np.exp(zn) / np.exp(zn).sum()
        q = np.full(k, ls / k)
        q[yn] += 1.0 - ls
        g = gamma if base == "focal" else 0.0
        b = -sum(q[j] * (1.0 - p[j]) ** g * np.log(p[j]) for j in range(k))
        if weight is not None:
            b *= weight[yn]
        r = 0.0
        if matrix is not None and lam:
            if form == "expected":
                r = sum(matrix[yn, j] * p[j] for j in range(k))
            else:
                r = -sum(matrix[yn, j] * np.log(1.0 - p[j] + eps) for j in range(k))
        total += b + lam * r
    return total / len(z)


def numeric_grad(f, z, h=1e-5):
    """Central finite differences of the scalar f at z (float64)."""
    z = np.asarray(z, dtype=np.float64)
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        g[idx] = (f(zp) - f(zm)) / (2 * h)
    return g


def batch(seed=0, n=7, scale=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, 4))
    y = rng.integers(0, 4, size=n)
    y[:4] = [0, 1, 2, 3]  # every class present
    z[0, 2] += 6.0  # a confident critical error: glioma -> notumor
    return z, y


def value_and_grad(loss_fn, z, y, dtype=torch.float32):
    zt = torch.tensor(z, dtype=dtype, requires_grad=True)
    out = loss_fn(zt, torch.as_tensor(y))
    out.backward()
    return out, zt.grad


# ------------------------------------------------------------- values and gradients
CASES = list(itertools.product(["expected", "log"], ["ce", "focal"], [False, True], [0.0, 0.1]))


@pytest.mark.parametrize("form, base, weighted, ls", CASES)
def test_risk_calibrated_loss_matches_reference(form, base, weighted, ls):
    z, y = batch(seed=CASES.index((form, base, weighted, ls)))
    w = WEIGHTS if weighted else None
    lam, gamma = 0.7, 1.5
    loss_fn = RiskCalibratedLoss(SEV, lam=lam, form=form, base=base, gamma=gamma, label_smoothing=ls, class_weight=w)
    got, grad = value_and_grad(loss_fn, z, y)

    def ref(zz):
        return reference_loss(zz, y, M, lam, form, base, gamma, ls, w)

    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref(z), rel=1e-5)
    np.testing.assert_allclose(grad.numpy(), numeric_grad(ref, z), rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("form", ["expected", "log"])
def test_parts_split_base_and_risk(form):
    z, y = batch(seed=3)
    loss_fn = RiskCalibratedLoss(SEV, lam=2.5, form=form, class_weight=WEIGHTS)
    parts = loss_fn.per_sample_parts(torch.tensor(z, dtype=torch.float32), torch.as_tensor(y))
    torch.testing.assert_close(parts["loss"], parts["base"] + 2.5 * parts["risk"])
    # Class weights act on the base term only; the risk term is the bare clinical cost.
    assert parts["base"].mean().item() == pytest.approx(reference_loss(z, y, weight=WEIGHTS), rel=1e-5)
    risk_ref = reference_loss(z, y, M, 1.0, form) - reference_loss(z, y)
    assert parts["risk"].mean().item() == pytest.approx(risk_ref, rel=1e-5)


def test_risk_values_by_hand():
    # Uniform logits over 4 classes, truth glioma: p_j = 1/4.
    z = torch.zeros(1, 4)
    y = torch.tensor([0])
    exp = RiskCalibratedLoss(SEV, form="expected").per_sample_parts(z, y)
    # R = 0.1 * 1/4 + 1.0 * 1/4 + 0.1 * 1/4 = 0.3; B = log 4.
    assert exp["risk"].item() == pytest.approx(0.3, abs=1e-6)
    assert exp["base"].item() == pytest.approx(np.log(4), abs=1e-6)
    log = RiskCalibratedLoss(SEV, form="log").per_sample_parts(z, y)
    assert log["risk"].item() == pytest.approx(-1.2 * np.log(0.75 + 1e-6), abs=1e-6)


@pytest.mark.parametrize("weighted, ls", [(False, 0.0), (True, 0.0), (False, 0.2), (True, 0.2)])
def test_baselines_match_reference(weighted, ls):
    z, y = batch(seed=11)
    w = WEIGHTS if weighted else None
    for loss_fn, base in [
        (WeightedCrossEntropyLoss(class_weight=w, label_smoothing=ls), "ce"),
        (FocalLoss(gamma=2.0, class_weight=w, label_smoothing=ls), "focal"),
    ]:
        got, grad = value_and_grad(loss_fn, z, y)

        def ref(zz, base=base):
            return reference_loss(zz, y, base=base, gamma=2.0, ls=ls, weight=w)

        assert got.item() == pytest.approx(ref(z), rel=1e-5)
        np.testing.assert_allclose(grad.numpy(), numeric_grad(ref, z), rtol=1e-4, atol=2e-6)


def test_cross_entropy_agrees_with_torch_and_focal_gamma_zero():
    z, y = batch(seed=5, n=16)
    zt, yt = torch.tensor(z, dtype=torch.float32), torch.as_tensor(y)
    for ls in (0.0, 0.1):
        torch.testing.assert_close(WeightedCrossEntropyLoss(label_smoothing=ls)(zt, yt), F.cross_entropy(zt, yt, label_smoothing=ls))
        torch.testing.assert_close(FocalLoss(gamma=0.0, label_smoothing=ls)(zt, yt), F.cross_entropy(zt, yt, label_smoothing=ls))
    # Focal down-weights easy samples: never above CE.
    assert (FocalLoss(gamma=2.0).per_sample(zt, yt) <= WeightedCrossEntropyLoss().per_sample(zt, yt) + 1e-7).all()


# ------------------------------------------------------------------ lam = 0 identity
@pytest.mark.parametrize("form, base, ls", list(itertools.product(["expected", "log"], ["ce", "focal"], [0.0, 0.1])))
def test_lam_zero_is_exactly_the_base_term(form, base, ls):
    z, y = batch(seed=7)
    base_fn = (
        FocalLoss(gamma=2.0, class_weight=WEIGHTS, label_smoothing=ls)
        if base == "focal"
        else WeightedCrossEntropyLoss(class_weight=WEIGHTS, label_smoothing=ls)
    )
    rcl = RiskCalibratedLoss(SEV, lam=0.0, form=form, base=base, gamma=2.0, label_smoothing=ls, class_weight=WEIGHTS)
    v1, g1 = value_and_grad(rcl, z, y)
    v2, g2 = value_and_grad(base_fn, z, y)
    assert torch.equal(v1, v2)
    assert torch.equal(g1, g2)
    # A zero severity matrix also leaves exactly the base term.
    zero = RiskCalibratedLoss(np.zeros((4, 4)), lam=3.0, form=form, base=base, gamma=2.0, label_smoothing=ls, class_weight=WEIGHTS)
    v3, g3 = value_and_grad(zero, z, y)
    assert torch.equal(v3, v2)
    torch.testing.assert_close(g3, g2, rtol=0, atol=0)


def test_risk_term_raises_loss_of_critical_errors_more():
    # Same p on the wrong class; the critical one (-> notumor) costs more than the fine one.
    z = torch.tensor([[0.0, 0.0, 4.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    for form in ("expected", "log"):
        per = RiskCalibratedLoss(SEV, lam=1.0, form=form).per_sample(z, y)
        ce = WeightedCrossEntropyLoss().per_sample(z, y)
        torch.testing.assert_close(ce[0], ce[1])
        assert per[0] > per[1] + 0.5


# ------------------------------------------------------------------------ build_loss
def test_build_loss_every_name():
    counts = [10, 30, 60, 100]
    z, y = batch(seed=2)
    seen = set()
    new_in_issue_13 = {"logit_adjusted", "soft_label", "rcl_soft"}  # tested against references below
    for name in LOSS_NAMES:
        if name in new_in_issue_13:
            continue
        loss_fn = build_loss(name, severity=SEV, class_counts=counts, lam=0.5, gamma=1.5)
        got, _ = value_and_grad(loss_fn, z, y)
        if name in ("ce", "weighted_ce", "effective_ce", "label_smoothing"):
            assert type(loss_fn) is WeightedCrossEntropyLoss
        elif name == "focal":
            assert type(loss_fn) is FocalLoss and loss_fn.gamma == 1.5
        else:
            assert type(loss_fn) is RiskCalibratedLoss and loss_fn.lam == 0.5
        w = {
            "weighted_ce": class_weights(counts, "inverse").numpy(),
            "effective_ce": class_weights(counts, "effective").numpy(),
        }.get(name)
        ls = 0.1 if name == "label_smoothing" else 0.0
        expected = {
            "ce": reference_loss(z, y),
            "weighted_ce": reference_loss(z, y, weight=w),
            "effective_ce": reference_loss(z, y, weight=w),
            "label_smoothing": reference_loss(z, y, ls=0.1),
            "focal": reference_loss(z, y, base="focal", gamma=1.5),
            "rcl": reference_loss(z, y, M, 0.5, "expected"),
            "rcl_log": reference_loss(z, y, M, 0.5, "log"),
            "rcl_focal": reference_loss(z, y, M, 0.5, "expected", "focal", 1.5),
        }[name]
        assert got.item() == pytest.approx(expected, rel=1e-5), name
        assert loss_fn.label_smoothing == ls
        seen.add(name)
    assert seen == {"ce", "weighted_ce", "effective_ce", "label_smoothing", "focal", "rcl", "rcl_log", "rcl_focal"}


def test_build_loss_options():
    assert build_loss("rcl_focal", severity="sicapv2", form="log").form == "log"
    assert build_loss("rcl", severity=SEV, form="log").form == "log"
    assert build_loss("rcl_log", severity=SEV).form == "log"
    assert build_loss("label_smoothing", label_smoothing=0.25).label_smoothing == 0.25
    assert build_loss("ce", label_smoothing=0.05).label_smoothing == 0.05
    torch.testing.assert_close(
        build_loss("effective_ce", class_counts=[5, 50], beta=0.9).class_weight, class_weights([5, 50], "effective", 0.9)
    )


def test_build_loss_errors():
    with pytest.raises(ValueError, match="Unknown loss 'dice'"):
        build_loss("dice")
    for name in ("rcl", "rcl_log", "rcl_focal"):
        with pytest.raises(ValueError, match=f"loss '{name}' needs a severity matrix"):
            build_loss(name)
    for name in ("weighted_ce", "effective_ce"):
        with pytest.raises(ValueError, match=f"loss '{name}' needs class_counts"):
            build_loss(name)


# ---------------------------------------------------------------------- class weights
def test_class_weights_inverse_by_hand():
    # 1/n = [0.1, 1/30, 1/60], mean 0.05 -> [2, 2/3, 1/3].
    np.testing.assert_allclose(class_weights([10, 30, 60], "inverse").numpy(), [2.0, 2 / 3, 1 / 3], rtol=1e-6)


def test_class_weights_effective_number_by_hand():
    # Cui et al. 2019: w_k ∝ (1 - b) / (1 - b^n_k). beta 0.9, n = 1, 2, 3:
    # [1, 0.1/0.19, 0.1/0.271] = [1, 0.526316, 0.369004], mean 0.631773.
    np.testing.assert_allclose(
        class_weights([1, 2, 3], "effective", beta=0.9).numpy(), [1.582847, 0.833077, 0.584076], rtol=1e-5
    )
    counts = np.array([3, 40, 500, 7000])
    for beta in (0.99, 0.999, 0.9999):
        raw = (1 - beta) / (1 - beta**counts)
        np.testing.assert_allclose(class_weights(counts, "effective", beta).numpy(), raw / raw.mean(), rtol=1e-6)
    # beta -> 0 gives equal weights; large beta approaches inverse frequency.
    np.testing.assert_allclose(class_weights(counts, "effective", 0.0).numpy(), np.ones(4))
    inv = class_weights(counts, "inverse").numpy()
    np.testing.assert_allclose(class_weights(counts, "effective", 1 - 1e-9).numpy(), inv, rtol=1e-3)


def test_class_weights_errors():
    with pytest.raises(ValueError, match="at least one sample"):
        class_weights([10, 0, 3])
    with pytest.raises(ValueError, match="Unknown class weighting 'sqrt'"):
        class_weights([1, 2], "sqrt")
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        class_weights([1, 2], "effective", beta=1.0)
    with pytest.raises(ValueError, match=">= 2 counts"):
        class_weights([5])


# ---------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": -0.1}, "lam must be finite and >= 0"),
        ({"lam": float("nan")}, "lam must be finite and >= 0"),
        ({"form": "hinge"}, "Unknown risk form 'hinge'"),
        ({"base": "dice"}, "Unknown base loss 'dice'"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"class_weight": [1.0, -1.0, 1.0, 1.0]}, "finite non-negative"),
        ({"base": "focal", "gamma": -1.0}, "gamma must be finite and >= 0"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RiskCalibratedLoss(SEV, **kwargs)


def test_call_errors():
    loss_fn = RiskCalibratedLoss(SEV)
    with pytest.raises(ValueError, match="logits have 3 classes but the severity matrix has 4"):
        loss_fn(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be"):
        loss_fn(torch.zeros(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="logits must be"):
        loss_fn(torch.zeros(4), torch.tensor([0]))
    with pytest.raises(ValueError, match="class_weight has 3 entries for 4 classes"):
        WeightedCrossEntropyLoss(class_weight=[1.0, 1.0, 1.0])(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="square matrix"):
        RiskCalibratedLoss(np.ones((3, 4)))
    with pytest.raises(ValueError, match="neither a severity preset"):
        RiskCalibratedLoss("no_such_preset")


# ---------------------------------------------------------------------- stability
BIG = 1e4
EXTREME = [
    ([BIG, -BIG, -BIG, -BIG], 0),  # confident and right
    ([-BIG, -BIG, BIG, -BIG], 0),  # confident critical error (glioma -> notumor)
    ([-BIG, BIG, BIG, BIG], 0),  # truth at -1e4, three-way tie elsewhere
    ([BIG, BIG, -BIG, -BIG], 1),  # two-way tie, truth inside
    ([0.0, 0.0, 0.0, 0.0], 3),
    ([-BIG, -BIG, -BIG, BIG], 2),  # over-call at full confidence
]


def _all_losses():
    out = [(name, build_loss(name, severity=SEV, class_counts=[10, 20, 30, 40])) for name in LOSS_NAMES]
    for form, base, ls in itertools.product(["expected", "log"], ["ce", "focal"], [0.0, 0.1]):
        out.append(
            (f"rcl-{form}-{base}-ls{ls}", RiskCalibratedLoss(SEV, lam=1.0, form=form, base=base, label_smoothing=ls, class_weight=WEIGHTS))
        )
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_extreme_logits_give_finite_loss_and_gradients(dtype):
    z = torch.tensor([row for row, _ in EXTREME], dtype=dtype)
    y = torch.tensor([label for _, label in EXTREME])
    for name, loss_fn in _all_losses():
        zz = z.clone().requires_grad_(True)
        loss = loss_fn(zz, y)
        loss.backward()
        assert torch.isfinite(loss), (name, loss)
        assert zz.grad.dtype == dtype
        assert torch.isfinite(zz.grad).all(), (name, zz.grad)
        assert loss.item() > 0, name


def test_extreme_logits_values():
    z = torch.tensor([row for row, _ in EXTREME], dtype=torch.float32)
    y = torch.tensor([label for _, label in EXTREME])
    ce = WeightedCrossEntropyLoss().per_sample(z, y)
    torch.testing.assert_close(ce, torch.tensor([0.0, 2 * BIG, 2 * BIG + np.log(3), np.log(2), np.log(4), 2 * BIG], dtype=torch.float32))
    exp = RiskCalibratedLoss(SEV, form="expected").per_sample_parts(z, y)["risk"]
    torch.testing.assert_close(exp, torch.tensor([0.0, 1.0, 0.4, 0.05, 0.3, 0.3]))
    # Log form: a certain critical error saturates at -log(eps) instead of diverging.
    log = RiskCalibratedLoss(SEV, form="log", eps=1e-6).per_sample_parts(z, y)["risk"]
    assert log[0].item() == pytest.approx(-0.1 * 2 * np.log(1 + 1e-6) - np.log(1 + 1e-6), abs=1e-5)
    assert log[1].item() == pytest.approx(-np.log(1e-6) - 0.2 * np.log(1 + 1e-6), rel=1e-5)
    assert log[5].item() == pytest.approx(-0.3 * np.log(1e-6), rel=1e-5)
    # bf16 input goes through the same float32 computation.
    log_bf16 = RiskCalibratedLoss(SEV, form="log").per_sample_parts(z.bfloat16(), y)["risk"]
    assert log_bf16.dtype == torch.float32
    torch.testing.assert_close(log_bf16, log)


def test_log_form_near_certain_probabilities_matches_reference():
    # p_j within 1e-7 of 1: naive float32 1 - p would round to 0; the stable path does not.
    z = np.array([[0.0, 0.0, 17.0, 0.0], [25.0, 0.0, 0.0, 0.0]])
    y = np.array([0, 2])
    got = RiskCalibratedLoss(SEV, form="log", eps=1e-9).per_sample_parts(torch.tensor(z, dtype=torch.float32), torch.as_tensor(y))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    ref = [-(M[yn] * np.log(1 - pn + 1e-9)).sum() for pn, yn in zip(p, y)]
    np.testing.assert_allclose(got["risk"].numpy(), ref, rtol=1e-4)


def test_integer_label_dtypes_and_float_labels():
    z, y = batch(seed=9)
    zt = torch.tensor(z, dtype=torch.float32)
    for loss_fn in (RiskCalibratedLoss(SEV, form="log"), WeightedCrossEntropyLoss(label_smoothing=0.1), FocalLoss()):
        expected = loss_fn(zt, torch.as_tensor(y, dtype=torch.int64))
        for dtype in (torch.int32, torch.int16, torch.uint8):
            assert torch.equal(loss_fn(zt, torch.as_tensor(y).to(dtype)), expected), (loss_fn, dtype)
        with pytest.raises(ValueError, match="labels must be integer class indices, got dtype torch.float32"):
            loss_fn(zt, torch.as_tensor(y, dtype=torch.float32))


# ----------------------------------------------------------------------------- the other training-time methods
from rcl_hf.losses import (  # noqa: E402
    AUCMarginLoss,
    DeferredRiskLoss,
    LogitAdjustedLoss,
    SoftLabelLoss,
    auc_margin_penalty,
    build_loss,
    loss_epoch_callback,
    severity_soft_targets,
)


def test_logit_adjusted_loss_matches_torch_cross_entropy_on_shifted_logits():
    torch.manual_seed(0)
    counts = [500, 60, 30, 10]
    z, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    for tau in (0.0, 1.0, 2.0):
        ref = torch.nn.functional.cross_entropy(z.double() + tau * prior.log(), y)
        assert float(LogitAdjustedLoss(counts, tau)(z, y)) == pytest.approx(float(ref), rel=1e-5)
    assert isinstance(build_loss("logit_adjusted", class_counts=counts, tau=0.5), LogitAdjustedLoss)
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("logit_adjusted")


def test_soft_label_targets_and_loss_by_hand():
    m = np.array([[0.0, 1.0, 0.1], [0.3, 0.0, 0.3], [0.1, 1.0, 0.0]])
    q = severity_soft_targets(m, 2.0).numpy()
    ref = np.exp(-2.0 * m) / np.exp(-2.0 * m).sum(1, keepdims=True)
    np.testing.assert_allclose(q, ref, rtol=1e-6)
    z, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    logp = torch.log_softmax(z.double(), 1).numpy()
    expect = -(ref[y.numpy()] * logp).sum(1).mean()
    assert float(SoftLabelLoss(m, 2.0)(z, y)) == pytest.approx(expect, rel=1e-5)
    rcl_soft = build_loss("rcl_soft", severity=m, lam=0.0, soft_label_beta=2.0)
    assert float(rcl_soft(z, y)) == pytest.approx(expect, rel=1e-5)  # λ = 0: the soft-label base alone
    with pytest.raises(ValueError, match="soft_label_beta"):
        severity_soft_targets(m, 0.0)


def test_auc_margin_penalty_equals_the_min_max_objective():
    """Independent reference: minimise over (a, b) and maximise over α >= 0 numerically."""
    from scipy.optimize import minimize, minimize_scalar

    rng = np.random.default_rng(1)
    h = rng.random(40)
    pos = rng.random(40) < 0.3
    for margin in (0.2, 1.0):
        def inner(ab):
            a, b = ab
            base = ((h[pos] - a) ** 2).mean() + ((h[~pos] - b) ** 2).mean()
            gap = margin - h[pos].mean() + h[~pos].mean()
            best = minimize_scalar(lambda al: -(2 * al * gap - al ** 2), bounds=(0, 10), method="bounded")
            return base - best.fun
        ref = minimize(inner, x0=[0.5, 0.5], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-12}).fun
        got = float(auc_margin_penalty(torch.tensor(h), torch.tensor(pos), margin))
        assert got == pytest.approx(ref, abs=1e-6)
    assert float(auc_margin_penalty(torch.tensor(h), torch.zeros(40, dtype=torch.bool))) == 0.0


def test_auc_margin_loss_adds_the_penalty_on_the_critical_score():
    sev = SeverityMatrix.preset("isic2018")
    torch.manual_seed(0)
    z, y = torch.randn(32, 7, requires_grad=True), torch.randint(0, 7, (32,))
    loss = build_loss("ce", severity=sev, aucm_weight=0.5, aucm_margin=1.0)
    assert isinstance(loss, AUCMarginLoss)
    crit = torch.tensor(sev.positive_rows)
    h = (torch.softmax(z.detach().double(), 1) * crit).sum(1)
    expect = torch.nn.functional.cross_entropy(z.detach().double(), y) + 0.5 * auc_margin_penalty(h, crit[y], 1.0)
    out = loss(z, y)
    assert float(out.detach()) == pytest.approx(float(expect), rel=1e-5)
    out.backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="severity"):
        build_loss("ce", aucm_weight=1.0)


def test_deferred_risk_loss_switches_on_at_the_start_epoch():
    sev = SeverityMatrix.preset("isic2018")
    torch.manual_seed(0)
    z, y = torch.randn(10, 7), torch.randint(0, 7, (10,))
    plain = float(torch.nn.functional.cross_entropy(z, y))
    full = float(RiskCalibratedLoss(sev, lam=2.0)(z, y))
    loss = build_loss("rcl", severity=sev, lam=2.0, risk_start_epoch=2, class_counts=[2, 2, 2, 1, 1, 1, 1])
    assert isinstance(loss, DeferredRiskLoss) and isinstance(loss, RiskCalibratedLoss)
    assert float(loss(z, y)) == pytest.approx(plain, rel=1e-5)  # epoch 0 (counted: 10 samples / 10 per epoch)
    assert float(loss(z, y)) == pytest.approx(plain, rel=1e-5)  # epoch 1
    assert float(loss(z, y)) == pytest.approx(full, rel=1e-5)   # epoch 2: the risk term is on
    with torch.no_grad():  # evaluation does not advance the count
        loss(z, y)
    assert loss.samples_seen == 30
    cb = loss_epoch_callback(loss)  # a Trainer callback overrides the count
    cb.on_epoch_begin(None, type("S", (), {"epoch": 0.0})(), None)
    assert loss.epoch == 0.0 and float(loss(z, y)) == pytest.approx(plain, rel=1e-5)
    cb.on_epoch_begin(None, type("S", (), {"epoch": 5.0})(), None)
    assert float(loss(z, y)) == pytest.approx(full, rel=1e-5)
    no_counts = build_loss("rcl", severity=sev, risk_start_epoch=1)
    with pytest.raises(ValueError, match="epoch"):
        no_counts(z, y)
    with pytest.raises(ValueError, match="risk term"):
        build_loss("ce", risk_start_epoch=1)
