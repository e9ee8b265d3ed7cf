"""HTML and markdown of the Space's answers (escaped labels, inline styles: no external CSS).

The card leads with the certified decision — a diagnosis, or "Refer to a specialist" with the reason in plain
words — then what is certified; the most probable class and the probabilities sit in a collapsed details part.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Optional, Sequence

from .certified import pretty_label
from .answer import OOD_MESSAGE, REFER_HEADLINE

__all__ = ["decision_card_html", "refusal_card_html", "comparison_markdown", "input_markdown", "certificate_markdown",
           "batch_markdown", "ood_card_html"]

_CARD_STYLE = (
    "border:1px solid #d0d7de;border-radius:10px;padding:12px 14px;background:#ffffff;color:#1f2328;"
    "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:14px;line-height:1.45"
)
#: Banner colours: a decision (neutral blue: a diagnosis is not an all-clear), a referral (red), outside (purple).
DECIDE_COLOUR, REFER_COLOUR, OUTSIDE_COLOUR = "#0b4f8a", "#b42318", "#6e40c9"


def _banner(colour: str, headline: str, sub: str, css_class: str) -> str:
    return (f'<div class="{css_class}" style="background:{colour};color:#ffffff;padding:12px 14px;border-radius:8px;'
            f'margin-bottom:10px"><div class="rcl-headline" style="font-weight:800;font-size:24px;letter-spacing:0.01em;color:#ffffff;text-transform:capitalize">'
            f'{html.escape(headline)}</div><div style="font-weight:500;font-size:14px;color:#ffffff">{html.escape(sub)}</div></div>')


def _certificate_line(rec: Mapping[str, Any]) -> str:
    if rec.get("certified"):
        return (f'<div class="rcl-certificate" style="font-size:13px;margin-bottom:6px"><b>Certified</b> '
                f'(target: at most {html.escape(str(rec["risk_target"]))} of critical cases missed): '
                f'{html.escape(rec["certificate"])}</div>')
    return ('<div class="rcl-certificate rcl-uncertified" style="font-size:13px;margin-bottom:6px;color:#7a4d00;'
            f'background:#fff1c2;border-radius:6px;padding:4px 8px"><b>Not certified.</b> {html.escape(rec["certificate"].split(": ", 1)[-1])}</div>')


def _details(rec: Mapping[str, Any]) -> str:
    probs = rec["probabilities"]
    rows = "".join(
        f'<tr><td style="padding:1px 8px">{html.escape(pretty_label(label))}</td>'
        f'<td style="padding:1px 8px;text-align:right">{p:.1%}</td></tr>' for label, p in probs.items())
    leaned = "" if not rec.get("refer") or rec.get("out_of_distribution") else (
        f"<div>Had it decided, the model would have said: {html.escape(pretty_label(rec['decision']))}.</div>")
    return (
        '<details class="rcl-details" style="margin-top:6px;font-size:13px;color:#57606a"><summary style="cursor:pointer">'
        "Details: probabilities</summary>"
        f"<div>Most probable class: {html.escape(pretty_label(rec['argmax']))} ({probs[rec['argmax']]:.1%}).</div>{leaned}"
        f'<table style="border-collapse:collapse;margin-top:4px">{rows}</table></details>'
    )


def ood_card_html(rec: Mapping[str, Any]) -> str:
    """The card of an image the OOD guard flags: no diagnosis, no probabilities."""
    return (f'<div class="rcl-card rcl-ood" style="{_CARD_STYLE}">'
            + _banner(OUTSIDE_COLOUR, REFER_HEADLINE, OOD_MESSAGE + ": no diagnosis.", "rcl-refer")
            + f"<div>{html.escape(rec['reason'])}</div>"
            + f'<div style="color:#57606a;font-size:13px;margin-top:6px">This model expects {html.escape(rec["expects"])}.</div></div>')


def refusal_card_html(message: str, expects: Optional[str] = None) -> str:
    """The card of an image refused before the model ran (too small, blank)."""
    hint = f'<div style="color:#57606a;font-size:13px;margin-top:6px">This model expects {html.escape(expects)}.</div>' if expects else ""
    return (f'<div class="rcl-card rcl-unusable" style="{_CARD_STYLE}">'
            + _banner(REFER_COLOUR, REFER_HEADLINE, "Image unusable: no diagnosis.", "rcl-refer")
            + f"<div>{html.escape(message)}</div>{hint}</div>")


def decision_card_html(rec: Mapping[str, Any]) -> str:
    """The answer of one model as HTML: the certified decision first, then the certificate, details collapsed."""
    if rec.get("out_of_distribution"):
        return ood_card_html(rec)
    if rec["refer"]:
        banner = _banner(REFER_COLOUR, REFER_HEADLINE, rec["reason"], "rcl-refer")
    else:
        banner = _banner(DECIDE_COLOUR, rec["headline"], "The model's decision (it decides this case itself).", "rcl-decided")
    return f'<div class="rcl-card" style="{_CARD_STYLE}">{banner}{_certificate_line(rec)}{_details(rec)}</div>'


def _esc(s: Any) -> str:
    return str(s).replace("|", "\\|")


def comparison_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """Side-by-side answers of two models on the same image (markdown)."""
    if len(records) < 2:
        return ""
    a, b = records[0], records[1]

    def answer(r: Mapping[str, Any]) -> str:
        return f"{REFER_HEADLINE} ({r['reason_kind']})" if r["refer"] else _esc(r["headline"])

    lines = [
        f"| | **{_esc(a['model'])}** | **{_esc(b['model'])}** |",
        "|---|---|---|",
        f"| answer | {answer(a)} | {answer(b)} |",
        f"| certified | {'yes, ' + a['risk_target'] if a['certified'] else 'no'} | {'yes, ' + b['risk_target'] if b['certified'] else 'no'} |",
        f"| decides itself (validation) | {'-' if a['coverage'] is None else format(a['coverage'], '.0%')} | "
        f"{'-' if b['coverage'] is None else format(b['coverage'], '.0%')} |",
    ]
    if answer(a) == answer(b):
        verdict = f"Both models answer **{answer(a)}**."
    else:
        verdict = f"The models differ: **{_esc(a['model'])}** answers {answer(a)}, **{_esc(b['model'])}** answers {answer(b)}."
    return "### Side by side\n\n" + verdict + "\n\n" + "\n".join(lines)


def certificate_markdown(models: Sequence[Any], risk_target: Optional[str]) -> str:
    """What is certified for the chosen target risk, per model: its decision layer's guarantees
    (:meth:`rcl_hf.DecisionLayer.guarantees`: the risk certificate, or that nothing is, and the OOD guard's)."""
    out = []
    for m in models:
        cals = m.calibrations or {}
        key = risk_target if risk_target in cals else next(iter(cals), None)
        out.append(f"**{_esc(m.name)}**: " + " ".join(m.decision_layer(key)[1].guarantees()))
    return "\n\n".join(out)


def batch_markdown(result: Mapping[str, Any]) -> str:
    """A batch's answers as a table, and whether the batch shows a shift that may break the guarantee."""
    lines = ["| image | answer | why |", "|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {_esc(r['name'])} | **{_esc(r.get('headline', '?'))}** | {_esc(r.get('reason', ''))} |")
    drift = result.get("drift")
    if drift is None:
        note = "Harmful shift not tested: no image could be analysed."
    else:  # the report's one sentence (rcl_hf.calibration.DriftReport.message), in bold when it warns
        note = f"**{drift.message()}**" if drift.drifted else drift.message()
    return note + "\n\n" + "\n".join(lines)


def input_markdown(info: Mapping[str, Any]) -> str:
    text = f"**Input:** {info['width']}x{info['height']} px, mode {info['mode']}" + (f", {info['format']}" if info.get("format") else "")
    if info.get("notes"):
        text += "  \n" + "  \n".join(f"- {html.escape(n)}" for n in info["notes"])
    return text
