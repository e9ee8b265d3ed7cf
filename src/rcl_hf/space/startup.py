"""The Space's start-up checks: which model to serve and whether the port is free, before any model loads."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Mapping, Optional, Tuple

__all__ = ["SpaceStartupError", "DEFAULT_MODEL_ID", "SHIPPED_MODEL_IDS", "default_model", "resolve_model_ids",
           "check_port_free"]

#: What ``python spaces_demo/app.py`` serves with no model named: the Brain-MRI model shipped in ``models/``.
#: (``rcl_hf.hub.SHIPPED_NAMESPACE``; written out so that serving a named model never imports the Hub package)
DEFAULT_MODEL_ID = "rcl-hf/brain-tumor-mri-efficientnet-lite0"
#: Every model shipped in ``models/``, by Hub id (the Space's page lists the others).
SHIPPED_MODEL_IDS = (DEFAULT_MODEL_ID, "rcl-hf/isic2018-efficientnet-lite0")


class SpaceStartupError(RuntimeError):
    """The Space cannot start (no model named, a missing folder, an offline Hub id, a busy port)."""


def default_model(models_dir: Optional[Path] = None) -> str:
    """The model served when none is named: the repository's ``models/<name>`` folder of :data:`DEFAULT_MODEL_ID`
    when this checkout has it, else the id itself (resolved through the Hugging Face cache by ``load_model``)."""
    if models_dir is None:
        from ..hub.cache_seed import shipped_models_dir

        models_dir = shipped_models_dir()
    folder = Path(models_dir) / DEFAULT_MODEL_ID.split("/", 1)[1]
    return str(folder) if (folder / "config.json").is_file() else DEFAULT_MODEL_ID


def resolve_model_ids(model: Optional[str], compare: Optional[str], environ: Optional[Mapping[str, str]] = None,
                      models_dir: Optional[Path] = None) -> Tuple[str, Optional[str]]:
    """``(model, compare)``: ``RCL_MODEL`` / ``RCL_COMPARE`` when set, else the CLI values, else the shipped
    Brain-MRI model (:func:`default_model`) and no comparison."""
    env = os.environ if environ is None else environ
    chosen = (env.get("RCL_MODEL") or "").strip() or (model or "").strip() or default_model(models_dir)
    return chosen, (env.get("RCL_COMPARE") or "").strip() or (compare or "").strip() or None


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`SpaceStartupError` (one line) when ``host:port`` cannot be bound — before any model loads."""
    if not 0 < int(port) < 65536:
        raise SpaceStartupError(f"Port {port} is outside 1-65535.")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, int(port)))
        except OSError as err:
            raise SpaceStartupError(f"Port {port} on {host} is not free ({err.strerror}): pick another with --port.") from None
