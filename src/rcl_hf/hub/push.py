"""Model pushes with dry runs, and what every push shares: the access check, staging, the upload.

Every push takes ``dry_run_dir``: the exact folder that would be uploaded is written there and
its card metadata checked offline. A real push first calls :func:`check_hub_access`, which
turns a missing token, offline mode or an unreachable Hub into one
:class:`~rcl_hf.offline.HubUnavailableError` line; then it stages the same folder in a
temporary directory, scans it for tokens and uploads it with ``HfApi.upload_folder``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from .card_checks import check_repo_id, validate_model_card, with_namespace
from .cards import build_model_card
from .errors import TOKEN_PATTERN, HubUnavailableError, hub_error, is_offline, network_error_types, one_line, redact
from .run_folder import check_model_source, collect_results, list_files, load_run_info, model_files

__all__ = ["check_hub_access", "prepare_model_folder", "prepare_output_dir", "push_model", "scan_for_tokens", "upload"]

PathLike = Union[str, "os.PathLike[str]"]
_TEXT_SUFFIXES = (".md", ".json", ".txt", ".py", ".yaml", ".yml", ".cfg", ".toml", ".csv")


def endpoint_url(endpoint: Optional[str] = None) -> str:
    """The Hub endpoint: ``endpoint``, else ``HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def prepare_output_dir(out_dir: PathLike, overwrite: bool) -> Path:
    """An empty folder at ``out_dir``; a non-empty one is replaced only with ``overwrite``."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"Dry-run folder {str(out)!r} exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise ValueError(f"Dry-run folder {str(out)!r} is not empty: choose a new folder or pass overwrite=True")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def scan_for_tokens(folder: PathLike, token: Optional[str]) -> None:
    """Raise if a staged text file contains ``token`` or a token-shaped string."""
    for rel in list_files(folder):
        path = Path(folder) / rel
        if path.suffix.lower() not in _TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        if (token and token in text) or TOKEN_PATTERN.search(text):
            raise ValueError(f"Refusing to upload {rel!r}: it contains a Hugging Face access token; remove it first")


def check_hub_access(token: Optional[str] = None, endpoint: Optional[str] = None) -> Tuple[str, str]:
    """Make sure a push can work before doing anything expensive.

    Checks, in order: offline mode is off (:func:`~rcl_hf.offline.is_offline`); a token exists
    (``token`` or ``huggingface_hub.get_token()``: ``HF_TOKEN`` or the ``hf auth login`` file);
    the Hub at ``endpoint`` (default ``HF_ENDPOINT`` / huggingface.co) answers ``whoami`` and
    accepts the token, which must not be read-only.

    Returns:
        ``(user name, token)``.

    Raises:
        HubUnavailableError: one line saying what to do; never the token, never an HTTP traceback.
    """
    from huggingface_hub import HfApi, get_token

    url = endpoint_url(endpoint)
    dry = "or use --dry_run_dir DIR to write the folder that would be uploaded"
    if is_offline():
        raise HubUnavailableError(
            f"HF_HUB_OFFLINE is set, so nothing can be pushed: unset it on a machine with network access, {dry}."
        )
    try:
        token = token or get_token()
    except Exception as err:  # e.g. a failing OIDC exchange
        raise HubUnavailableError(one_line(f"Could not read a Hugging Face token ({type(err).__name__}): "
                                           "set HF_TOKEN or run `hf auth login`")) from None
    if not token:
        raise HubUnavailableError(
            f"No Hugging Face token found: run `hf auth login` or set HF_TOKEN to a write token "
            f"(https://huggingface.co/settings/tokens), {dry}."
        )
    try:
        info = HfApi(endpoint=url, token=token, library_name="rcl_hf").whoami(token=token)
    except network_error_types() as err:
        raise hub_error(err, "check the Hugging Face token", url, token) from None
    except Exception as err:  # anything else from deep inside an HTTP stack: still one line
        raise HubUnavailableError(one_line(redact(
            f"Cannot check the Hugging Face token at {url} ({type(err).__name__}); {dry}.", token))) from None
    role = (((info or {}).get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubUnavailableError("The Hugging Face token is read-only: create a write token at "
                                  "https://huggingface.co/settings/tokens and run `hf auth login`.")
    return str((info or {}).get("name") or "unknown"), token


def upload(staged: Path, repo_id: str, repo_type: str, token: str, private: bool, commit_message: str,
           space_sdk: Optional[str] = None) -> str:
    """Create the repository (if needed) and upload ``staged`` in one commit; return the commit URL."""
    from huggingface_hub import HfApi

    endpoint = endpoint_url()
    api = HfApi(endpoint=endpoint, token=token, library_name="rcl_hf")
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(staged), repo_type=repo_type,
                                 commit_message=commit_message)
    except network_error_types() as err:
        raise hub_error(err, f"upload to the {repo_type} repository {repo_id!r}", endpoint, token) from None
    return str(getattr(info, "commit_url", None) or info)


def prepare_model_folder(folder: PathLike, out_dir: PathLike, repo_id: str, *, overwrite: bool = False,
                         **card_kwargs: Any) -> Path:
    """Write into ``out_dir`` exactly the files :func:`push_model` uploads, and validate them.

    Copies the weights (``*.safetensors``), ``config.json`` (label maps ensured, severity
    checked), ``preprocessor_config.json``, result and recipe JSON, and plots (top level and
    ``plots/``); skips optimizer states, ``checkpoint-*``, ``training_args.bin`` and logs; renders
    ``README.md`` with :func:`~rcl_hf.hub.build_model_card` and checks it with
    :func:`~rcl_hf.hub.validate_model_card` against the copied results.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from ..models import ensure_label_maps_in_config_file

    src = Path(folder)
    check_repo_id(repo_id)
    check_model_source(src)
    out = prepare_output_dir(out_dir, overwrite)
    if out.resolve() == src.resolve():
        raise ValueError("The dry-run folder must differ from the model folder")
    files = model_files(src)
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, out / rel)
    ensure_label_maps_in_config_file(str(out))
    text = str(build_model_card(out, repo_id, files=sorted(set(files) | {"README.md"}), **card_kwargs))
    (out / "README.md").write_text(text, encoding="utf-8")
    run = load_run_info(out)
    validate_model_card(
        text,
        expected_results=collect_results(out),
        require_datasets=bool(card_kwargs.get("datasets") or run.get("dataset_repo_id")),
        require_base_model=bool(card_kwargs.get("base_model") or run.get("base_model")),
    )
    scan_for_tokens(out, None)
    return out


def push_model(
    folder: PathLike,
    repo_id: str,
    dry_run_dir: Optional[PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    *,
    commit_message: str = "Upload rcl_hf model",
    overwrite: bool = False,
    **card_kwargs: Any,
) -> str:
    """Upload a trained model folder with its model card to ``repo_id`` (a model repository).

    Args:
        folder: the model / training output folder.
        repo_id: ``owner/name``; a bare ``name`` (as ``TrainingArguments.hub_model_id`` may be) is
            completed with the token's user name in a real push.
        dry_run_dir: when given, write the upload folder there (:func:`prepare_model_folder`),
            validate it, and upload nothing; works offline.
        token: a write token; default ``huggingface_hub.get_token()`` (``HF_TOKEN`` or ``hf auth login``).
        private: create the repository as private.
        commit_message: message of the upload commit.
        overwrite: allow replacing a non-empty ``dry_run_dir``.
        **card_kwargs: ``license``, ``datasets``, ``base_model``, ``tags``, ``threshold`` for
            :func:`~rcl_hf.hub.build_model_card`.

    Returns:
        The dry-run folder, or the URL of the commit on the Hub.

    Raises:
        HubUnavailableError: no token, offline, or the Hub unreachable / refusing (one line).
    """
    if dry_run_dir is not None:
        return str(prepare_model_folder(folder, dry_run_dir, repo_id, overwrite=overwrite, **card_kwargs))
    with_namespace(repo_id, "user")
    check_model_source(Path(folder))
    user, token = check_hub_access(token)
    repo_id = with_namespace(repo_id, user)
    with tempfile.TemporaryDirectory(prefix="rcl_hf_push_") as tmp:
        staged = prepare_model_folder(folder, Path(tmp) / "upload", repo_id, **card_kwargs)
        scan_for_tokens(staged, token)
        return upload(staged, repo_id, "model", token, private, commit_message)
