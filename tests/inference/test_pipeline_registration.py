"""rcl_hf.pipeline_registration: the ``risk-aware-image-classification`` task is registered whatever the import
order, without ``import rcl_hf`` importing ``transformers.pipelines`` (each case in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rcl_hf.pipeline_registration import _Finder


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("code", [
    "import rcl_hf\nimport transformers.pipelines as tp",           # rcl_hf first: registered when pipelines loads
    "import transformers.pipelines as tp\nimport rcl_hf",           # pipelines first: registered at import
    "import rcl_hf.pipeline\nimport transformers.pipelines as tp",  # the module itself first (no circular import)
])
def test_pipeline_task_is_registered_whatever_the_import_order(code):
    _run(code + "\nassert 'risk-aware-image-classification' in tp.PIPELINE_REGISTRY.get_supported_tasks()\n")


def test_import_stays_light_and_the_finder_is_one_shot():
    """``import rcl_hf`` leaves one finder and no pipeline module; installing again adds no second finder; once
    ``transformers.pipelines`` loads, the finder is gone and the task module is loaded."""
    _run("""
import sys
import rcl_hf
from rcl_hf import pipeline_registration as reg

finders = lambda: [f for f in sys.meta_path if isinstance(f, reg._Finder)]
assert "transformers.pipelines" not in sys.modules and "rcl_hf.pipeline" not in sys.modules
assert len(finders()) == 1, sys.meta_path
reg.install()
reg.install()
assert len(finders()) == 1, sys.meta_path
import transformers.pipelines as tp
assert finders() == [], sys.meta_path
assert "rcl_hf.pipeline" in sys.modules
assert "risk-aware-image-classification" in tp.PIPELINE_REGISTRY.get_supported_tasks()
""")


def test_the_finder_answers_for_transformers_pipelines_only():
    finder = _Finder()
    for name in ("json", "transformers", "transformers.pipelines.base", "rcl_hf.pipeline"):
        assert finder.find_spec(name, None) is None
