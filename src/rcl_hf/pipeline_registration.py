"""Registers the ``risk-aware-image-classification`` pipeline task when ``transformers.pipelines`` loads.

``import rcl_hf`` must stay light (the metric, the Space's ``--help``), and importing
``transformers.pipelines`` costs seconds. So ``rcl_hf`` registers its task (:mod:`rcl_hf.pipeline`)
right away when ``transformers.pipelines`` is already imported, and otherwise installs a
``sys.meta_path`` finder (:mod:`importlib`'s documented extension point, PEP 451) that wraps the
loader of ``transformers.pipelines``: after that module executes, the task is registered. Either
way, ``pipeline("risk-aware-image-classification", ...)`` works once ``rcl_hf`` is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any

__all__ = ["install"]

_TARGET = "transformers.pipelines"


def _register() -> None:
    """Import :mod:`rcl_hf.pipeline`, which registers the task as its last statement. When that module is
    what triggered the import of ``transformers.pipelines`` (it is still initialising), it registers itself."""
    if f"{__package__}.pipeline" not in sys.modules:
        importlib.import_module(f"{__package__}.pipeline")


class _Loader(importlib.abc.Loader):
    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        self._wrapped.exec_module(module)
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec, then wrap its loader
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register now if ``transformers.pipelines`` is loaded, else when it loads."""
    if _TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
