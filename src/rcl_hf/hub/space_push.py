"""Space pushes: the Gradio demo folder, made to build on the Hub on its own, with dry runs.

A Gradio Space installs ``requirements.txt`` from a package index before its files are copied
in (the build mounts only that file), and rcl_hf is on no index. So the staged Space carries
rcl_hf itself: a wheel is built from this checkout (``pip wheel --no-deps``) and unpacked into
the Space root (``rcl_hf/`` and its ``.dist-info``, what ``pip install`` of that wheel would put
in site-packages), where ``app.py`` imports it; ``requirements.txt`` must then name every
dependency of that wheel (its ``Requires-Dist``, with the ``demo`` extra).

The models the Space serves travel with it: local model folders are copied under
``models/<name>/`` with their model cards (:func:`~rcl_hf.hub.push.prepare_model_folder`), Hub
ids are listed in the README's ``models:``, and ``rcl_space.json`` names what ``app.py`` loads
(``{"model", "compare", "model_label", "compare_label"}``). A model trained on rcl_hf's
synthetic data is refused unless ``allow_synthetic=True``: the public demo must serve a model
trained on real images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from . import push as _push
from .card_checks import check_repo_id, front_matter, with_namespace
from .errors import CardValidationError
from .run_folder import check_model_source, load_run_info

__all__ = ["SPACE_CONFIG", "build_wheel", "prepare_space_folder", "push_space", "validate_space_folder"]

PathLike = Union[str, "os.PathLike[str]"]
SPACE_CONFIG = "rcl_space.json"
_SPACE_IGNORE = ("__pycache__", "*.pyc", ".git", ".gradio", "flagged", ".ipynb_checkpoints", ".DS_Store",
                 "*.egg-info", ".venv", ".pytest_cache")
_SPACE_COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
_RCL_REQUIREMENT = re.compile(r"^\s*rcl[-_.]hf\b", re.IGNORECASE)


def validate_space_folder(space_dir: PathLike) -> Dict[str, Any]:
    """Check a Gradio Space folder before upload and return its README front matter.

    Requires ``README.md`` with YAML front matter declaring ``sdk: gradio`` and a ``title``;
    the ``app_file`` (default ``app.py``) must exist and compile; ``requirements.txt`` must
    exist. Optional keys are checked when present: ``colorFrom``/``colorTo`` (Hub colours),
    ``short_description`` (at most 60 characters), ``models``/``datasets`` (Hub ids),
    ``sdk_version`` (a version string).

    Raises:
        FileNotFoundError: a required file is missing. CardValidationError: bad front matter.
    """
    root = Path(space_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Space folder {str(root)!r} does not exist")
    readme = root / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(f"{str(root)!r} has no README.md (the Space configuration lives in its front matter)")
    meta = front_matter(readme.read_text(encoding="utf-8"))
    if meta.get("sdk") != "gradio":
        raise CardValidationError(f"Space README front matter must declare 'sdk: gradio', got {meta.get('sdk')!r}")
    if not isinstance(meta.get("title"), str) or not meta["title"].strip():
        raise CardValidationError("Space README front matter needs a 'title'")
    app_file = meta.get("app_file", "app.py")
    if not isinstance(app_file, str) or not (root / app_file).is_file():
        raise FileNotFoundError(f"Space app_file {app_file!r} does not exist in {str(root)!r}")
    try:
        compile((root / app_file).read_text(encoding="utf-8"), str(root / app_file), "exec")
    except SyntaxError as err:
        raise CardValidationError(f"Space app_file {app_file!r} does not compile: line {err.lineno}: {err.msg}") from None
    if not (root / "requirements.txt").is_file():
        raise FileNotFoundError(f"{str(root)!r} has no requirements.txt (the Space installs its dependencies from it)")
    for key in ("colorFrom", "colorTo"):
        if key in meta and meta[key] not in _SPACE_COLORS:
            raise CardValidationError(f"Space {key} must be one of {list(_SPACE_COLORS)}, got {meta[key]!r}")
    if "short_description" in meta and len(str(meta["short_description"])) > 60:
        raise CardValidationError(f"Space short_description has {len(str(meta['short_description']))} characters; the Hub allows 60")
    if "sdk_version" in meta and not re.match(r"^\d+(\.\d+){0,2}([a-z]+\d*)?$", str(meta["sdk_version"])):
        raise CardValidationError(f"Space sdk_version {meta['sdk_version']!r} is not a version like 5.9.1")
    for key in ("models", "datasets"):
        values = meta.get(key) or []
        if not isinstance(values, list):
            raise CardValidationError(f"Space {key} must be a list of Hub ids, got {values!r}")
        for value in values:
            try:
                check_repo_id(value, f"Space {key} entry")
            except ValueError as err:
                raise CardValidationError(str(err)) from None
    return meta


def build_wheel(out_dir: PathLike, project_dir: Optional[PathLike] = None) -> Path:
    """Build the rcl_hf wheel (``pip wheel --no-deps --no-build-isolation --no-index``) into ``out_dir``.

    ``project_dir`` defaults to the checkout this package was imported from (the folder holding
    ``pyproject.toml`` above ``src/rcl_hf``). The sources are copied to a temporary folder first,
    so the build leaves nothing (``build/``, ``*.egg-info``) in the checkout.
    """
    root = Path(project_dir) if project_dir is not None else Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "rcl_hf").is_dir():
        raise FileNotFoundError(
            f"No rcl_hf source checkout at {str(root)!r} (pyproject.toml + src/rcl_hf) to build the Space's wheel "
            "from: pass wheel=PATH (--wheel) with a built rcl_hf wheel")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rcl_hf_wheel_") as tmp:
        src = Path(tmp) / "rcl_hf"
        shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns(*_SPACE_IGNORE))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "-w", str(out), str(src)], cwd=tmp, capture_output=True, text=True)
    wheels = sorted(out.glob("rcl_hf-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"Building the rcl_hf wheel failed (pip exit {proc.returncode}): {tail}")
    return wheels[-1]


def _vendor_wheel(wheel: Path, out: Path) -> Path:
    """Unpack a pure-Python wheel into ``out`` (what ``pip install`` puts in site-packages); return its dist-info."""
    if not re.match(r"^rcl_hf-[^-]+-py3-none-any\.whl$", wheel.name):
        raise ValueError(f"{wheel.name!r} is not a pure-Python rcl_hf wheel (rcl_hf-<version>-py3-none-any.whl)")
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(("rcl_hf/", "rcl_hf-")) and ".data/" not in m]
        zf.extractall(out, members)
    return next(out.glob("rcl_hf-*.dist-info"))


def _check_requirements(requirements: Path, dist_info: Path, checks: List[str]) -> None:
    """Drop any ``rcl_hf`` line (the package ships in the folder) and require every dependency of the wheel."""
    from importlib.metadata import PathDistribution

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    kept, listed = [], set()
    for line in requirements.read_text(encoding="utf-8").splitlines():
        body = line.split("#", 1)[0].strip()
        if _RCL_REQUIREMENT.match(body):
            continue
        kept.append(line)
        if body and not body.startswith("-"):
            try:
                listed.add(canonicalize_name(Requirement(body).name))
            except InvalidRequirement as err:
                raise CardValidationError(f"requirements.txt line {body!r} is not a requirement: {err}") from None
    dist = PathDistribution(dist_info)
    needed = []
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": "demo"}):
            needed.append(req)
    missing = [str(r) for r in needed if canonicalize_name(r.name) not in listed]
    if missing:
        raise CardValidationError(f"requirements.txt lacks {missing}, which rcl_hf[demo] needs: add them so the Space builds")
    header = (f"# rcl_hf {dist.version} ships inside this Space (rcl_hf/, unpacked from its wheel): the lines below are\n"
              "# only what it needs from package indexes (written by rcl_hf.hub.push_space).\n")
    requirements.write_text(header + "\n".join(kept) + "\n", encoding="utf-8")
    checks.append(f"requirements.txt names all {len(needed)} dependencies of rcl_hf[demo] {dist.version}; "
                  f"rcl_hf itself ships in the folder (rcl_hf/, {dist_info.name})")


def _model_label(run: Dict[str, Any], fallback: str) -> str:
    loss = str(run.get("loss") or (run.get("risk") or {}).get("loss") or "")
    if not loss:
        return fallback
    return f"risk-calibrated ({loss})" if loss.startswith("rcl") else f"baseline ({loss})"


def _stage_models(models: Sequence[str], out: Path, repo_id: str, allow_synthetic: bool, checks: List[str]) -> List[str]:
    """Copy local model folders under ``models/``, write ``rcl_space.json``; return the Hub ids referenced."""
    if len(models) > 2:
        raise ValueError(f"A Space serves one model and an optional comparison, got {len(models)}: {list(models)}")
    config: Dict[str, Optional[str]] = {}
    hub_ids = []
    for role, entry in zip(("model", "compare"), models):
        path = Path(os.path.expanduser(str(entry)))
        if path.is_dir():
            severity = check_model_source(path)
            run = load_run_info(path)
            dataset = str(run.get("dataset_name") or run.get("dataset") or severity.name or "unknown")
            if dataset == "synthetic" and not allow_synthetic:
                raise ValueError(
                    f"{str(path)!r} was trained on rcl_hf's synthetic images: a public Space must serve a model "
                    "trained on real data (train one with spaces_demo/app.py --train, or pass --allow_synthetic_models "
                    "for a test Space)")
            name = re.sub(r"[^A-Za-z0-9._-]", "-", path.resolve().name) or role
            if config.get("model") == f"models/{name}":
                name = f"{name}-{role}"
            _push.prepare_model_folder(path, out / "models" / name, f"{repo_id.split('/')[0]}/{name}")
            config[role] = f"models/{name}"
            config[f"{role}_label"] = _model_label(run, name)
            checks.append(f"{role}: models/{name} (dataset {dataset}, {severity.num_labels} classes; weights, "
                          "processor and severity checked, model card validated)")
        else:
            check_repo_id(str(entry), f"Space {role}")
            config[role] = str(entry)
            hub_ids.append(str(entry))
            checks.append(f"{role}: Hub model {entry} (loaded by the Space at start; not checked offline)")
    (out / SPACE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return hub_ids


def prepare_space_folder(
    space_dir: PathLike,
    out_dir: PathLike,
    *,
    repo_id: str = "rcl-hf/demo",
    models: Sequence[str] = (),
    wheel: Optional[PathLike] = None,
    allow_synthetic: bool = False,
    overwrite: bool = False,
    checks: Optional[List[str]] = None,
) -> Path:
    """Write into ``out_dir`` the Space folder :func:`push_space` uploads, and check that it builds on its own.

    Copies ``space_dir`` (caches, ``__pycache__``, ``.git``, ``flagged/`` left out), unpacks the
    rcl_hf wheel (``wheel``, else :func:`build_wheel` from this checkout) into it, checks
    ``requirements.txt`` against the wheel's dependencies, stages ``models`` (local folders or
    Hub ids, at most two: the model and a comparison) and writes ``rcl_space.json``.

    Args:
        checks: a list that receives one line per check made (the CLI prints them).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from huggingface_hub import SpaceCard

    checks = [] if checks is None else checks
    src = Path(space_dir)
    meta = validate_space_folder(src)
    out = _push.prepare_output_dir(out_dir, overwrite)
    if out.resolve() == src.resolve():
        raise ValueError("The dry-run folder must differ from the Space folder")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(*_SPACE_IGNORE), dirs_exist_ok=True)
    checks.append(f"README.md front matter: sdk gradio {meta.get('sdk_version', '(Hub default)')}, title, "
                  f"app_file {meta.get('app_file', 'app.py')} compiles")
    with tempfile.TemporaryDirectory(prefix="rcl_hf_space_wheel_") as tmp:
        built = Path(wheel) if wheel is not None else build_wheel(tmp)
        if not built.is_file():
            raise FileNotFoundError(f"Wheel {str(built)!r} does not exist")
        dist_info = _vendor_wheel(built, out)
    _check_requirements(out / "requirements.txt", dist_info, checks)
    hub_ids = _stage_models(list(models), out, repo_id, allow_synthetic, checks)
    if not models:
        checks.append("no model given: the Space stops at start until RCL_MODEL is set (pass --space_models)")
    if hub_ids:
        card = SpaceCard((out / "README.md").read_text(encoding="utf-8"))
        card.data.models = sorted(set(list(getattr(card.data, "models", None) or []) + hub_ids))
        card.save(out / "README.md")
        validate_space_folder(out)
    _push.scan_for_tokens(out, None)
    checks.append("no access token in any text file")
    return out


def push_space(
    space_dir: PathLike = "spaces_demo",
    repo_id: Optional[str] = None,
    dry_run_dir: Optional[PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    *,
    models: Sequence[str] = (),
    wheel: Optional[PathLike] = None,
    allow_synthetic: bool = False,
    commit_message: str = "Upload rcl_hf demo Space",
    overwrite: bool = False,
    checks: Optional[List[str]] = None,
) -> str:
    """Upload the Gradio demo folder as a Space (``repo_type="space"``, ``space_sdk="gradio"``).

    Args:
        space_dir: folder with ``app.py``, ``requirements.txt`` and ``README.md`` front matter.
        repo_id: ``owner/name`` of the Space.
        dry_run_dir: write the upload folder there and upload nothing (works offline).
        models, wheel, allow_synthetic, checks: as for :func:`prepare_space_folder`.
        token, private, commit_message, overwrite: as for :func:`~rcl_hf.hub.push_model`.

    Returns:
        The dry-run folder, or the URL of the Space commit.
    """
    if repo_id is None:
        raise ValueError("push_space needs repo_id ('owner/name' of the Space)")
    kwargs = dict(models=models, wheel=wheel, allow_synthetic=allow_synthetic, checks=checks)
    if dry_run_dir is not None:
        check_repo_id(repo_id)
        return str(prepare_space_folder(space_dir, dry_run_dir, repo_id=repo_id, overwrite=overwrite, **kwargs))
    with_namespace(repo_id, "user")
    validate_space_folder(space_dir)
    if not models and not (Path(space_dir) / SPACE_CONFIG).is_file():
        raise ValueError("A pushed Space must serve a model: pass --space_models MODEL_DIR_OR_HUB_ID [COMPARE] "
                         "(models trained on real data; a dry run shows the folder without one)")
    user, token = _push.check_hub_access(token)
    repo_id = with_namespace(repo_id, user)
    with tempfile.TemporaryDirectory(prefix="rcl_hf_space_") as tmp:
        staged = prepare_space_folder(space_dir, Path(tmp) / "upload", repo_id=repo_id, **kwargs)
        _push.scan_for_tokens(staged, token)
        return _push.upload(staged, repo_id, "space", token, private, commit_message, space_sdk="gradio")
