"""The one tiny checkpoint of the test suite: a random-init ``hf-resnet`` (32 px) saved with its image processor
and label maps, as ``scripts/train.py`` saves a run. The session fixture ``tiny_checkpoint`` (conftest.py) is one
shared copy for tests that only read it; tests that change a checkpoint folder build their own with
:func:`save_tiny_checkpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def save_tiny_checkpoint(folder: Path, seed: int = 0, labels: Optional[Sequence[str]] = None,
                         severity=None) -> Path:
    """Write the tiny checkpoint into ``folder`` (synthetic severity, optionally reordered to ``labels``)."""
    import torch

    from rcl_hf.models import build_image_processor, build_model, ensure_label_maps_in_config_file
    from rcl_hf.severity import SeverityMatrix

    sev = severity if severity is not None else SeverityMatrix.preset("synthetic")
    if labels:
        sev = sev.reorder(list(labels))
    torch.manual_seed(seed)
    model, data_config = build_model("hf-resnet", sev, image_size=32)
    model.save_pretrained(folder)
    build_image_processor(model, data_config).save_pretrained(folder)
    ensure_label_maps_in_config_file(str(folder))
    return Path(folder)


def copy_without_severity(folder: Path, dst: Path) -> Path:
    """A copy of a checkpoint folder whose config lost its ``rcl_severity`` (a model not trained with rcl_hf)."""
    import json
    import shutil

    shutil.copytree(folder, dst)
    config = json.loads((dst / "config.json").read_text())
    del config["rcl_severity"]
    (dst / "config.json").write_text(json.dumps(config))
    return Path(dst)
