"""Load ``spaces_demo/app.py`` (a script, not a package module) once per test session."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

APP_PATH = Path(__file__).resolve().parents[1] / "spaces_demo" / "app.py"
MODULE_NAME = "rcl_space_app"  # one module object shared by every test file


def load_space_app() -> ModuleType:
    if MODULE_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(MODULE_NAME, APP_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[MODULE_NAME]
