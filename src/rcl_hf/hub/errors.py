"""One-line errors for Hub paths that cannot reach the Hub (offline, no token, refused) and for cards
the Hub would reject; token redaction.

Offline mode and the model-loading error (:class:`~rcl_hf.offline.HubUnavailableError`,
:func:`~rcl_hf.offline.is_offline`, :func:`~rcl_hf.offline.offline_error`) live in the low
module :mod:`rcl_hf.offline`; this module builds the push errors on them.
"""

from __future__ import annotations

import importlib
import re
from typing import List, Optional, Tuple

from ..offline import HubUnavailableError, is_offline

__all__ = [
    "CardValidationError",
    "TOKEN_PATTERN",
    "hub_error",
    "network_error_types",
    "one_line",
    "redact",
]

#: A Hugging Face access token (``hf_`` followed by at least 20 letters or digits).
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
DRY_RUN_HINT = "or write the folder offline with --dry_run_dir DIR"


class CardValidationError(ValueError):
    """A model card, dataset card or Space README whose metadata the Hub would reject or misread."""


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
