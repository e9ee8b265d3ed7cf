"""The shape of the code: the library (``src/rcl_hf``) never reaches into the study (``research/``), has no
import cycle, is the only package installed, and every module stays small and named by concept."""

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "src" / "rcl_hf"
STUDY = ROOT / "research"


def _modules(base: Path, package: str):
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).with_suffix("")
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name: str, path: Path, top_level_only: bool):
    """Absolute names imported by a module (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            for alias in node.names:  # `from . import x` may import a submodule
                yield f"{mod}.{alias.name}"


def test_the_library_never_imports_the_study():
    offenders = [(name, imp) for name, path in _modules(LIB, "rcl_hf")
                 for imp in _imports(name, path, top_level_only=False)
                 if imp == "research" or imp.startswith("research.")]
    assert not offenders, f"library modules import the study: {offenders}"


def test_importing_every_library_module_loads_no_study_code():
    names = [name for name, _ in _modules(LIB, "rcl_hf")
             if not name.startswith("rcl_hf.metrics.critical_error_rate")]  # an evaluate metric script
    code = ("import importlib, sys\n"
            f"for n in {names!r}:\n    importlib.import_module(n)\n"
            "bad = sorted(m for m in sys.modules if m == 'research' or m.startswith('research.'))\n"
            "print(bad)\nraise SystemExit(1 if bad else 0)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT / "src"), env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def _cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in graph:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


#: The library's layers, lowest first (written down once): a module may import its own layer and those below it,
#: never one above, at the top of the file or inside a function alike. The longest matching prefix places a module.
LAYERS = (
    ("base", ("rcl_hf.severity", "rcl_hf.atomic_io", "rcl_hf.offline", "rcl_hf.run_files", "rcl_hf.formatting",
              "rcl_hf.checkpoints", "rcl_hf.gpu_defaults")),
    ("metrics and rules", ("rcl_hf.metrics", "rcl_hf.losses", "rcl_hf.decision", "rcl_hf.selection", "rcl_hf.plots")),
    ("data, calibration and the OOD guard", ("rcl_hf.data", "rcl_hf.calibration", "rcl_hf.ood")),
    ("models", ("rcl_hf.models", "rcl_hf.frozen", "rcl_hf.model_source")),
    ("the decision layer", ("rcl_hf.decision_layer",)),
    ("inference", ("rcl_hf.inference", "rcl_hf.pipeline", "rcl_hf.pipeline_registration", "rcl_hf.ood_fit",
                   "rcl_hf.calibration.model_folder")),
    ("the Hub", ("rcl_hf.hub",)),
    ("training", ("rcl_hf.trainer", "rcl_hf.trainer_callbacks", "rcl_hf.train_args", "rcl_hf.train_data",
                  "rcl_hf.train_job")),
    ("the Space", ("rcl_hf.space",)),
    ("commands", ("rcl_hf.commands",)),
)


def _layer(module: str) -> int:
    best = max(((len(prefix), k) for k, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py"
    return best[1]


def _library_graph():
    """Module -> library modules it imports, top-level and inside functions (the package ``rcl_hf`` itself, which
    re-exports lazily, and a package's own ``__init__`` seen from its submodules are left out)."""
    mods = dict(_modules(LIB, "rcl_hf"))

    def resolve(imp):  # `from pkg import name` may name a module or an attribute
        while imp and imp not in mods:
            imp = imp.rsplit(".", 1)[0] if "." in imp else ""
        return imp

    graph = {}
    for name, path in mods.items():
        if name == "rcl_hf":  # the package's lazy public names (`rcl_hf.predict`) sit above everything
            continue
        deps = {resolve(imp) for imp in _imports(name, path, top_level_only=False)} - {"", name, "rcl_hf"}
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def test_the_library_has_no_import_cycle_top_level_or_in_functions():
    graph = _library_graph()
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_every_import_points_down_the_layers():
    """No import, at the top of a module or inside a function, from a lower layer to a higher one: entry points sit
    above the packages they drive, the Space above training, training above the Hub, inference above the decision
    layer."""
    graph = _library_graph()
    climbs = sorted(f"{a} ({LAYERS[_layer(a)][0]}) -> {b} ({LAYERS[_layer(b)][0]})"
                    for a, deps in graph.items() for b in deps if _layer(b) > _layer(a))
    assert not climbs, "imports that climb the layers:\n" + "\n".join(climbs)


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path):
    """The check reads in-function imports (the kind that once hid 11 climbs)."""
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from rcl_hf.commands.train import train_main\n")
    assert "rcl_hf.commands.train" in set(_imports("rcl_hf.severity", mod, top_level_only=False))
    assert "rcl_hf.commands.train" not in set(_imports("rcl_hf.severity", mod, top_level_only=True))
    assert _layer("rcl_hf.commands.train") > _layer("rcl_hf.severity")
    assert _layer("rcl_hf.calibration.model_folder") > _layer("rcl_hf.calibration.fit")  # the longest prefix wins


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_library_is_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = project["tool"]["setuptools"]["packages"]["find"]
    assert find["where"] == ["src"], "the wheel must hold src/ only (the study and benchmarks are not installed)"
    assert not (ROOT / "src" / "research").exists() and not (LIB / "experiments").exists()
    for script in project["project"]["scripts"].values():
        assert script.startswith("rcl_hf."), f"console script outside the library: {script}"


@pytest.mark.parametrize("base", [LIB, STUDY, ROOT / "spaces_demo", ROOT / "benchmarks", ROOT / "scripts"],
                         ids=lambda p: p.name)
def test_modules_stay_under_500_lines(base):
    long = {str(p.relative_to(ROOT)): n for p in base.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"


def test_names_are_concepts_not_dates():
    dated = re.compile(r"round[ _-]?\d|issue[ _-]?\d", re.IGNORECASE)
    paths = [p for base in (LIB, STUDY) for p in base.rglob("*") if "__pycache__" not in p.parts]
    bad_names = [str(p.relative_to(ROOT)) for p in paths if dated.search(p.name)]
    assert not bad_names, f"files named after a round or an issue: {bad_names}"
    bad_text = [str(p.relative_to(ROOT)) for p in paths if p.suffix in (".py", ".yaml")
                and dated.search(p.read_text(encoding="utf-8"))]
    assert not bad_text, f"code or configs that speak of rounds or issues: {bad_text}"


def test_every_documented_module_command_has_a_main():
    """A docstring that says ``python -m research.x`` / ``python -m rcl_hf.x`` names a module that runs."""
    pattern = re.compile(r"python -m ((?:research|rcl_hf|benchmarks)(?:\.\w+)*)")
    missing = []
    for base in (LIB, STUDY, ROOT / "benchmarks"):
        for path in base.rglob("*.py"):
            for module in set(pattern.findall(path.read_text(encoding="utf-8"))):
                target = ROOT / ("src" if module.startswith("rcl_hf") else "") / Path(*module.split("."))
                main = target / "__main__.py" if target.is_dir() else target.with_suffix(".py")
                if not main.exists() or "__main__" not in main.read_text(encoding="utf-8"):
                    missing.append(f"{path.relative_to(ROOT)}: python -m {module}")
    assert not missing, f"documented commands that do nothing: {missing}"


#: the bottom layer: modules every other one may use, which import nothing from the library
BASE_MODULES = ("rcl_hf.atomic_io", "rcl_hf.offline", "rcl_hf.run_files")


@pytest.mark.parametrize("module", BASE_MODULES)
def test_base_modules_import_nothing_from_the_library(module):
    mods = dict(_modules(LIB, "rcl_hf"))
    found = sorted({imp for imp in _imports(module, mods[module], top_level_only=False)
                    if imp == "rcl_hf" or imp.startswith("rcl_hf.")})
    assert not found, f"{module} imports {found}"


def test_model_loading_does_not_load_the_hub_package():
    """Loading and serving a model needs the offline errors (``rcl_hf.offline``), not cards and uploads."""
    code = ("import sys\nimport rcl_hf.models, rcl_hf.inference, rcl_hf.decision_layer, rcl_hf.pipeline, rcl_hf.space.answer\n"
            "print(sorted(m for m in sys.modules if m.startswith('rcl_hf.hub')))\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT / "src"), env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_every_console_script_names_a_function_that_exists():
    import importlib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for name, target in project["project"]["scripts"].items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{name} = {target}"
