"""The Space's start-up checks: which model to serve and whether the port is free, before any model loads."""

from __future__ import annotations

import os
import socket
from typing import Mapping, Optional, Tuple

__all__ = ["SpaceStartupError", "resolve_model_ids", "check_port_free"]


class SpaceStartupError(RuntimeError):
    """The Space cannot start (no model named, a missing folder, an offline Hub id, a busy port)."""


def resolve_model_ids(model: Optional[str], compare: Optional[str], environ: Optional[Mapping[str, str]] = None) -> Tuple[str, Optional[str]]:
    """``(model, compare)``: ``RCL_MODEL`` / ``RCL_COMPARE`` when set, else the CLI values.

    Raises:
        SpaceStartupError: when no model is named anywhere (there is no default model:
            a synthetic model must not pretend to read real images).
    """
    env = os.environ if environ is None else environ
    chosen = (env.get("RCL_MODEL") or "").strip() or (model or "").strip()
    if not chosen:
        raise SpaceStartupError(
            "No model to serve: pass --model PATH_OR_HUB_ID (a folder saved by rcl_hf or a Hub id), "
            "or --train DATASET --data_dir DIR to train a real-data pair first, or set RCL_MODEL (a Space variable)."
        )
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
