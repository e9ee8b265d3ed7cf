"""Dataset card (``huggingface_hub.DatasetCard``) for a loaded ``DatasetDict``.

The card states what a user of the Hub needs before training on the data:
description, classes with counts per split, the severity matrix (and its
critical cells), split sizes and where each split came from, how images are
grouped, the duplicate audit, skipped files, and the source's licence and
citation.  The YAML header carries ``license``, ``pretty_name``,
``task_categories: [image-classification]``, tags and ``size_categories``.

A ``DatasetDict`` that was not loaded through :func:`rcl_hf.data.load_dataset` (no rcl_hf
metadata) gets a short generic card instead: labels, split sizes, the severity matrix when
the splits carry one, and "not for clinical use".  :func:`rcl_hf.hub.push_dataset` writes
this card unless it is given one.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from huggingface_hub import DatasetCard, DatasetCardData

from ..severity import SeverityMatrix

__all__ = ["build_dataset_card"]

logger = logging.getLogger(__name__)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def build_dataset_card(
    dsd: Any,
    *,
    repo_id: Optional[str] = None,
    report: Any = None,
    license: Optional[str] = None,
) -> DatasetCard:
    """The dataset card of a ``DatasetDict``.

    For data returned by :func:`rcl_hf.data.load_dataset` (its ``info.description`` metadata
    names the dataset) the full card of the module docstring; for any other ``DatasetDict``, or
    metadata this card cannot describe (logged), the short generic card.

    Args:
        dsd: the ``DatasetDict``.
        repo_id: Hub repository, used in the title of a generic card and in the usage snippet.
        report: the :class:`~rcl_hf.data.records.LoadReport` of the load, for the
            list of skipped files (counts come from the metadata otherwise).
        license: a Hub license id that replaces the source's (``LICENSE`` of the dataset module);
            the generic card's only licence.
    """
    try:
        return _loaded_dataset_card(dsd, repo_id=repo_id, report=report, license=license)
    except ValueError as err:  # a DatasetDict not loaded through rcl_hf.data
        logger.warning("rcl_hf.data.card could not describe this dataset (%s); writing a generic card", err)
        return _generic_card(dsd, repo_id, license)


def _stored_severity(dsd: Any) -> Optional[SeverityMatrix]:
    """The severity matrix stored in the first split whose metadata holds a readable one (no preset guess)."""
    from .metadata import dataset_metadata

    for ds in dsd.values():
        stored = dataset_metadata(ds).get("rcl_severity")
        if stored is None:
            continue
        try:
            return SeverityMatrix.from_dict(stored)
        except (TypeError, ValueError, KeyError):
            continue
    return None


def _generic_card(dsd: Any, repo_id: Optional[str], license: Optional[str]) -> DatasetCard:
    """Labels, split sizes, the severity matrix when the splits carry one, and "not for clinical use"."""
    repo = repo_id or "<repo_id>"
    first = next(iter(dsd.values()))
    names = list(getattr(first.features.get("label"), "names", None) or [])
    severity = _stored_severity(dsd)
    data = DatasetCardData(license=license, task_categories=["image-classification"],
                           tags=["medical-imaging", "rcl_hf", "risk-calibrated-learning"])
    sizes = "\n".join(f"| {split} | {len(ds)} |" for split, ds in dsd.items())
    severity_md = (f"## Severity matrix\n\nCells marked ⚠ are critical errors.\n\n{severity.to_markdown()}\n"
                   if severity is not None else "")
    return DatasetCard(
        f"---\n{data.to_yaml()}\n---\n\n# {repo.split('/')[-1]}\n\n"
        f"Image classification data prepared with rcl_hf ({len(names) or 'unknown number of'} classes"
        f"{': ' + ', '.join(names) if names else ''}).\n\n"
        f"| split | examples |\n|---|---|\n{sizes}\n\n{severity_md}\n"
        "## Use\n\n```python\nfrom datasets import load_dataset\n\n"
        f"ds = load_dataset({repo!r})\n```\n\n"
        "**Not for clinical use.** Research data; check the original dataset's license and terms before use.\n"
    )


def _loaded_dataset_card(dsd: Any, *, repo_id: Optional[str], report: Any, license: Optional[str]) -> DatasetCard:
    """The full card of data loaded by :func:`rcl_hf.data.load_dataset` (``ValueError`` for other data)."""
    from .metadata import dataset_metadata, severity_for
    from .registry import dataset_module

    meta = dataset_metadata(dsd)
    name = meta.get("dataset")
    if not name:
        raise ValueError("This DatasetDict carries no rcl_hf metadata (load it with rcl_hf.data.load_dataset)")
    mod = dataset_module(name)
    extra = meta.get("rcl_hf", {})
    sev = severity_for(dsd)
    labels = list(next(iter(dsd.values())).features["label"].names)
    total = sum(len(ds) for ds in dsd.values())
    pretty = getattr(mod, "PRETTY_NAME", name)
    generated = name == "synthetic"
    license_id = license or getattr(mod, "LICENSE", "apache-2.0" if generated else "other")
    description = getattr(mod, "DESCRIPTION", None) or (mod.__doc__ or "").strip().split("\n\n")[0]

    data = DatasetCardData(
        license=license_id,
        pretty_name=f"{pretty} (rcl_hf)",
        task_categories=["image-classification"],
        tags=["medical", "rcl_hf", "risk-calibrated-learning", name],
        size_categories=[_size_category(total)],
    )

    origin = (
        "generated on the fly by `rcl_hf.data.load_synthetic` (no source files)"
        if generated
        else "from the original download layout"
    )
    lines = [f"# {pretty}", "", description, ""]
    lines += [
        f"Prepared with `rcl_hf` (Risk-Calibrated Learning for the Hugging Face stack) {origin}. "
        "The `info.description` of every split holds a JSON object whose "
        "`rcl_severity` key is the severity matrix below; `rcl_hf.data.severity_for(dataset)` reads it back.",
        "",
        "## Classes",
        "",
        "| id | class | " + " | ".join(dsd.keys()) + " |",
        "|---|---|" + "---|" * len(dsd),
    ]
    per_split = {}
    for split, ds in dsd.items():
        counts = [0] * len(labels)
        for v in ds["label"]:
            counts[v] += 1
        per_split[split] = counts
    for i, label in enumerate(labels):
        crit = " (positive)" if sev.positive_rows[sev.index(label)] else ""
        lines.append(f"| {i} | {label}{crit} | " + " | ".join(str(per_split[s][i]) for s in dsd) + " |")
    lines.append("| | **total** | " + " | ".join(str(len(ds)) for ds in dsd.values()) + " |")
    lines += [
        "",
        "## Severity matrix",
        "",
        "`M[i, j]` is the clinical cost of predicting `j` when the truth is `i` (correct 0, fine-grained 0.1, "
        "over-call 0.3, critical 1.0). Critical cells (⚠) count toward the Critical Error Rate.",
        "",
        sev.to_markdown(),
        "",
        "## Splits",
        "",
        "| split | images | groups | source |",
        "|---|---|---|---|",
    ]
    sources = extra.get("split_sources", {})
    for split, ds in dsd.items():
        n_groups = len(set(ds["group_id"])) if "group_id" in ds.column_names else "-"
        lines.append(f"| {split} | {len(ds)} | {n_groups} | {sources.get(split, 'official')} |")
    lines += ["", "## Grouping", "", getattr(mod, "GROUPING", ""), ""]
    lines.append(
        "Columns: `image`, `label`, "
        + ", ".join(f"`{c}`" for c in next(iter(dsd.values())).column_names if c not in ("image", "label"))
        + ". `group_id` is the grouping key (byte-identical files share one); `source_file` is the path "
        "in the original download; `sha1` hashes the original file."
    )
    overlaps = extra.get("group_overlaps") or {}
    if overlaps:
        lines.append("")
        lines.append(
            "Official splits sharing groups (kept as released): "
            + ", ".join(f"{k.replace('|', '/')}: {v}" for k, v in overlaps.items())
        )
    lines += ["", "## Data quality", ""]
    dup = extra.get("duplicates", {})
    for kind in ("exact", "perceptual"):
        d = dup.get(kind) or {}
        if d.get("groups"):
            lines.append(
                f"- {kind} duplicates: {d['groups']} group(s) of {d['files']} files; "
                f"{d['cross_split_groups']} group(s) across splits; {d['label_conflict_groups']} with conflicting labels."
            )
    if dup.get("dropped"):
        lines.append(f"- {len(dup['dropped'])} cross-split duplicate(s) dropped from evaluation splits.")
    problems = extra.get("problems", {})
    if problems:
        lines.append("- Files or rows reported at load time: " + ", ".join(f"{k} x{v}" for k, v in sorted(problems.items())))
    else:
        lines.append("- No file was skipped or converted at load time.")
    if report is not None and getattr(report, "skipped", None):
        lines += ["", "<details><summary>Skipped files</summary>", ""]
        lines += [f"- `{p.path}`: {p.reason}" for p in report.skipped[:200]]
        if len(report.skipped) > 200:
            lines.append(f"- ... and {len(report.skipped) - 200} more")
        lines += ["", "</details>"]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "from rcl_hf.data import severity_for",
        "",
        f"dsd = load_dataset({(repo_id or '<repo_id>')!r})",
        "severity = severity_for(dsd)",
        "```",
    ]
    licence_text = getattr(mod, "LICENSE_TEXT", "Generated data, under the project's licence" if generated else "")
    homepage = getattr(mod, "HOMEPAGE", "")
    lines += ["", "## Licence", "", f"{licence_text} (`{license_id}`)." + (f" Source: {homepage}" if homepage else "")]
    citation = getattr(mod, "CITATION", "").strip()
    if citation:
        lines += ["", "## Citation", "", "```bibtex", citation, "```"]
    lines.append("")
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return DatasetCard(content)
