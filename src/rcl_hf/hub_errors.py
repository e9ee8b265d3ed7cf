"""Clear, one-line errors for Hub paths that cannot reach the Hub (offline, no token)."""

from __future__ import annotations

import os

__all__ = ["HubUnavailableError", "offline_error"]


class HubUnavailableError(RuntimeError):
    """A Hub id could not be resolved locally and the Hub is unreachable or refused access."""


def offline_error(name: str, err: BaseException) -> HubUnavailableError:
    """Turn a deep ``OSError``/HTTP error from ``from_pretrained`` into one actionable line."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if os.path.exists(name) or name.startswith((".", "/")):
        return HubUnavailableError(f"{name!r} is not a model folder (no config.json with weights there)")
    if name.count("/") != 1:
        return HubUnavailableError(f"{name!r} is neither an existing model folder nor a Hub id of the form owner/name")
    how = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached or refused the request"
    return HubUnavailableError(
        f"Cannot load {name!r}: it is not in the local Hugging Face cache and {how} "
        f"({type(err).__name__}). Download it where the Hub is reachable (`hf download {name}`), "
        "pass a local folder, or log in with `hf auth login` for a private repo."
    )
