"""The Space folder that `push_to_hub --kind space --dry_run_dir DIR` writes builds on its own: its
requirements install into a fresh virtual environment from local files only (no index), and
there, from the Space folder, rcl_hf (shipped inside it) and every module app.py imports load,
while the fresh environment alone cannot import rcl_hf."""

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from rcl_hf.commands.push import main as push_main

REPO = Path(__file__).resolve().parents[2]


def _app_imports(app: Path) -> list:
    """Top-level modules app.py imports (module level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(app.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return sorted(names - {"__future__"})


def test_space_dry_run_installs_from_local_files_into_a_fresh_venv(tmp_path):
    dry = tmp_path / "space"
    assert push_main(["--kind", "space", "--space_dir", str(REPO / "spaces_demo"), "--repo_id", "owner/rcl-demo",
                     "--dry_run_dir", str(dry)]) == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The installed dependencies of this machine stand in for the index: a plain path entry, so the
    # editable rcl_hf install of the development environment (a .pth hook there) is not visible.
    Path(site, "local_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1")

    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                          "-r", str(dry / "requirements.txt")], env=env, cwd=dry, capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]

    alone = subprocess.run([str(python), "-c", "import rcl_hf"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert alone.returncode != 0 and "No module named 'rcl_hf'" in alone.stderr

    modules = _app_imports(dry / "app.py")
    assert {"rcl_hf", "gradio"} <= set(modules)
    script = ("import importlib, rcl_hf, rcl_hf.inference, rcl_hf.hub\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "print(rcl_hf.__file__)")
    run = subprocess.run([str(python), "-c", script], env=env, cwd=dry, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(run.stdout.strip().splitlines()[-1]).resolve() == (dry / "rcl_hf" / "__init__.py").resolve()
