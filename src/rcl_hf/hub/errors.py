"""One-line errors for Hub paths that cannot reach the Hub (offline, no token, refused), and the
one place that reads offline mode (``huggingface_hub.constants.HF_HUB_OFFLINE``).

This module imports nothing from the rest of rcl_hf, so model loading (``rcl_hf.models``,
``rcl_hf.inference``) can use it without pulling in card rendering or uploads.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import List, Optional, Tuple

__all__ = [
    "CardValidationError",
    "HubUnavailableError",
    "TOKEN_PATTERN",
    "hub_error",
    "is_offline",
    "network_error_types",
    "offline_error",
    "one_line",
    "redact",
]

#: A Hugging Face access token (``hf_`` followed by at least 20 letters or digits).
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
DRY_RUN_HINT = "or write the folder offline with --dry_run_dir DIR"


class HubUnavailableError(RuntimeError):
    """A Hub id could not be resolved locally and the Hub is unreachable or refused access."""


class CardValidationError(ValueError):
    """A model card, dataset card or Space README whose metadata the Hub would reject or misread."""


def is_offline() -> bool:
    """Offline mode as huggingface_hub sees it: ``constants.HF_HUB_OFFLINE`` (set from
    ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` when huggingface_hub is imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def redact(text: str, token: Optional[str] = None) -> str:
    """``text`` with ``token`` and anything shaped like a Hugging Face token replaced by ``***``."""
    if token:
        text = text.replace(token, "***")
    return TOKEN_PATTERN.sub("hf_***", text)


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(text).split())


def network_error_types() -> Tuple[type, ...]:
    """Exception classes that mean "the Hub could not be reached or refused" (HTTP libraries included)."""
    types: List[type] = [OSError]  # ConnectionError, TimeoutError, OfflineModeIsEnabled; httpx2: huggingface_hub >= 1.x
    for module, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException"),
                         ("huggingface_hub.errors", "HfHubHTTPError")):
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def hub_error(err: BaseException, action: str, endpoint: str, token: Optional[str] = None) -> HubUnavailableError:
    """One actionable line for an exception raised while talking to the Hub (never the token)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, OfflineModeIsEnabled) or is_offline():
        msg = f"Cannot {action}: HF_HUB_OFFLINE is set. Unset it on a machine with network access, {DRY_RUN_HINT}."
    elif status == 401:
        msg = (f"Cannot {action}: the Hub at {endpoint} rejected the token (HTTP 401). Create a write token at "
               "https://huggingface.co/settings/tokens and run `hf auth login` (or set HF_TOKEN).")
    elif status == 403:
        msg = (f"Cannot {action}: the token has no write access to this repository (HTTP 403). Use a write token "
               "of an account or organisation that owns the namespace.")
    elif status == 404:
        msg = f"Cannot {action}: the repository or namespace was not found on {endpoint} (HTTP 404); check --repo_id."
    elif status is not None:
        msg = f"Cannot {action}: the Hub at {endpoint} answered HTTP {status}; try again later, {DRY_RUN_HINT}."
    else:
        msg = (f"Cannot {action}: the Hugging Face Hub at {endpoint} is unreachable ({type(err).__name__}). "
               f"Check the network, proxy or HF_ENDPOINT, {DRY_RUN_HINT}.")
    return HubUnavailableError(one_line(redact(msg, token)))


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
