"""HTML and markdown of the Space's results (escaped labels, inline styles: no external CSS)."""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from .core import OOD_MESSAGE

__all__ = ["decision_card_html", "comparison_markdown", "input_markdown", "ood_card_html"]

_CARD_STYLE = (
    "border:1px solid #d0d7de;border-radius:10px;padding:12px 14px;background:#ffffff;color:#1f2328;"
    "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:14px;line-height:1.45"
)


def _fmt_p(x: float) -> str:
    return f"{x:.3f}"


def ood_card_html(rec: Mapping[str, Any]) -> str:
    """The panel shown instead of a diagnosis when the OOD guard flags the image."""
    return (
        f'<div class="rcl-card rcl-ood" style="{_CARD_STYLE}">'
        '<div class="rcl-refer" style="background:#6e40c9;color:#ffffff;font-weight:800;font-size:18px;'
        f'padding:10px 12px;border-radius:8px;margin-bottom:10px">&#9888; {html.escape(OOD_MESSAGE)}'
        '<div style="font-weight:500;font-size:13px;color:#ffffff">No diagnosis: this image does not resemble the '
        f"images the model was trained on (OOD score {rec['ood_score']:.1f} &gt; {rec['ood_threshold']:.1f}). "
        "Refer to a specialist.</div></div>"
        f"<div>Trained classes: {html.escape(', '.join(rec['probabilities']))}</div></div>"
    )


def decision_card_html(rec: Mapping[str, Any]) -> str:
    """The decision panel of one model as HTML (escaped labels, inline styles); the OOD panel when flagged."""
    if rec.get("out_of_distribution"):
        return ood_card_html(rec)
    e = html.escape
    t = rec["threshold"]
    if rec["refer"]:
        banner = (
            '<div class="rcl-refer" style="background:#b42318;color:#ffffff;font-weight:800;font-size:18px;'
            'letter-spacing:0.02em;padding:10px 12px;border-radius:8px;margin-bottom:10px">'
            f"&#9888; REFER TO A SPECIALIST<div style=\"font-weight:500;font-size:13px;color:#ffffff\">expected clinical cost "
            f"{_fmt_p(rec['expected_cost'])} &gt; threshold &tau; = {t:.2f}</div></div>"
        )
    else:
        banner = (
            '<div class="rcl-no-refer" style="background:#1a7f37;color:#ffffff;font-weight:700;font-size:16px;'
            'padding:10px 12px;border-radius:8px;margin-bottom:10px">'
            f"&#10003; No referral needed<div style=\"font-weight:500;font-size:13px;color:#ffffff\">expected clinical cost "
            f"{_fmt_p(rec['expected_cost'])} &le; threshold &tau; = {t:.2f}</div></div>"
        )
    probs = rec["probabilities"]
    crit_classes = set(rec["critical_classes"])
    a, b = rec["argmax"], rec["bayes_decision"]
    differ = (
        ' <span style="background:#fff1c2;color:#7a4d00;border-radius:4px;padding:0 5px;font-size:12px">differs from argmax</span>'
        if a != b
        else ""
    )

    def line(name: str, value: str) -> str:
        return (
            '<div style="display:flex;gap:12px;padding:3px 0;border-bottom:1px solid #eaeef2">'
            f'<div style="flex:0 0 42%;font-weight:600">{name}</div><div style="flex:1">{value}</div></div>'
        )

    crit = rec["critical_error_risk"]
    summary = (
        '<div style="margin-bottom:10px">'
        + line("Argmax decision", f"{e(a)} (p = {_fmt_p(probs[a])})")
        + line("Bayes-risk decision", f"<b>{e(b)}</b>{differ}")
        + line("Expected clinical cost", f"{_fmt_p(rec['expected_cost'])} (Bayes) &middot; {_fmt_p(rec['argmax_expected_cost'])} (argmax)")
        + line("Critical mass", f"{_fmt_p(rec['critical_mass'])} on {e(', '.join(rec['critical_classes']))} (classes whose miss is critical)")
        + line("P(critical error)", f"{_fmt_p(crit['argmax'])} acting on argmax &middot; {_fmt_p(crit['bayes_decision'])} on the Bayes decision")
        + "</div>"
    )
    th = 'style="text-align:left;padding:2px 8px;border-bottom:1px solid #d0d7de"'
    rows = []
    for label, p in probs.items():
        marks = []
        if label == a:
            marks.append("argmax")
        if label == b:
            marks.append("Bayes")
        if label in crit_classes:
            marks.append("miss is critical")
        rows.append(
            f'<tr><td style="padding:2px 8px">{e(label)}</td><td style="padding:2px 8px;text-align:right">{_fmt_p(p)}</td>'
            f'<td style="padding:2px 8px;text-align:right">{_fmt_p(rec["decision_costs"][label])}</td>'
            f'<td style="padding:2px 8px;color:#57606a">{e(", ".join(marks))}</td></tr>'
        )
    table = (
        '<table style="border-collapse:collapse;font-size:13px;width:100%">'
        f"<tr><th {th}>class</th><th {th}>probability</th><th {th}>cost if decided</th><th {th}></th></tr>"
        + "".join(rows)
        + "</table>"
    )
    ood = "" if rec.get("ood_score") is None else (
        f'<div style="color:#57606a;font-size:12px;margin-top:6px">In-distribution check passed: OOD score '
        f"{rec['ood_score']:.1f} &le; {rec['ood_threshold']:.1f}</div>")
    return f'<div class="rcl-card" style="{_CARD_STYLE}">{banner}{summary}{table}{ood}</div>'


def comparison_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """Side-by-side summary of two models on the same image (markdown)."""
    if len(records) < 2:
        return ""
    a, b = records[0], records[1]

    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    if a.get("out_of_distribution") or b.get("out_of_distribution"):
        return "### Side by side\n\n**" + OOD_MESSAGE + "** (" + ", ".join(
            esc(r["model"]) for r in (a, b) if r.get("out_of_distribution")) + ")."
    lines = [
        f"| | **{esc(a['model'])}** | **{esc(b['model'])}** |",
        "|---|---|---|",
        f"| argmax decision | {esc(a['argmax'])} | {esc(b['argmax'])} |",
        f"| Bayes-risk decision | {esc(a['bayes_decision'])} | {esc(b['bayes_decision'])} |",
        f"| expected clinical cost | {a['expected_cost']:.3f} | {b['expected_cost']:.3f} |",
        f"| critical mass | {a['critical_mass']:.3f} | {b['critical_mass']:.3f} |",
        f"| P(critical error), argmax | {a['critical_error_risk']['argmax']:.3f} | {b['critical_error_risk']['argmax']:.3f} |",
        f"| refer to a specialist | {'**YES**' if a['refer'] else 'no'} | {'**YES**' if b['refer'] else 'no'} |",
    ]
    if a["bayes_decision"] == b["bayes_decision"]:
        verdict = f"Both models decide **{esc(a['bayes_decision'])}** (Bayes-risk decision)."
    else:
        verdict = (
            f"The models disagree: **{esc(a['model'])}** decides {esc(a['bayes_decision'])}, "
            f"**{esc(b['model'])}** decides {esc(b['bayes_decision'])}."
        )
    return "### Side by side\n\n" + verdict + "\n\n" + "\n".join(lines)


def input_markdown(info: Mapping[str, Any]) -> str:
    text = f"**Input:** {info['width']}x{info['height']} px, mode {info['mode']}" + (f", {info['format']}" if info.get("format") else "")
    if info.get("notes"):
        text += "  \n" + "  \n".join(f"- {html.escape(n)}" for n in info["notes"])
    return text
