"""Offline errors for model loading: one line instead of a deep ``OSError`` when a model is neither a
local folder nor in the Hugging Face cache, and the one place that reads offline mode
(``huggingface_hub.constants.HF_HUB_OFFLINE``).

This module imports nothing from the rest of rcl_hf, so model loading (``rcl_hf.models``,
``rcl_hf.inference``), the Space and the command lines use it without pulling in the Hub package
(card rendering, uploads); :mod:`rcl_hf.hub.errors` builds its push errors on it.
"""

from __future__ import annotations

import os

__all__ = ["HubUnavailableError", "is_offline", "offline_error"]


class HubUnavailableError(RuntimeError):
    """A Hub id could not be resolved locally and the Hub is unreachable or refused access."""


def is_offline() -> bool:
    """Offline mode as huggingface_hub sees it: ``constants.HF_HUB_OFFLINE`` (set from
    ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` when huggingface_hub is imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def offline_error(name: str, err: BaseException) -> HubUnavailableError:
    """Turn a deep ``OSError``/HTTP error from ``from_pretrained`` into one actionable line."""
    if os.path.exists(name) or name.startswith((".", "/")):
        return HubUnavailableError(f"{name!r} is not a model folder (no config.json with weights there)")
    if name.count("/") != 1:
        return HubUnavailableError(f"{name!r} is neither an existing model folder nor a Hub id of the form owner/name")
    how = "HF_HUB_OFFLINE is set" if is_offline() else "the Hub could not be reached or refused the request"
    return HubUnavailableError(
        f"Cannot load {name!r}: it is not in the local Hugging Face cache and {how} "
        f"({type(err).__name__}). Download it where the Hub is reachable (`hf download {name}`), "
        "pass a local folder, or log in with `hf auth login` for a private repo."
    )
