"""The package's shape: layers that import downwards only (the import-linter contract in
pyproject.toml), no import cycle, function-local imports included, and a module map that lists
every module (docs/architecture.md and each package's ``__init__`` docstring)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "segkit"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (function bodies too)."""
    root = package.parent
    modules = {module_name(p, root): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_function_local_imports_included():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg.high import g\n    return g\n")
    (pkg / "high.py").write_text("from pkg.low import f\n")
    assert cycles(import_graph(pkg)) == [["pkg.high", "pkg.low"]]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([exe], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_layer_contract_holds():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_layer_contract_fails_on_an_upward_import(tmp_path):
    """A copy of the package where a low layer (the checkpoint file format) imports the
    orchestrator inside a function: the contract must break and name the import."""
    shutil.copytree(PACKAGE, tmp_path / "segkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    low = tmp_path / "segkit" / "io" / "checkpoint.py"
    low.write_text(low.read_text() + "\n\ndef _upward():\n    from segkit.run import training\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, '.'); "
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "segkit.io.checkpoint -> segkit.run.training" in result.stdout


def test_about_a_dozen_entries_at_the_top_of_the_package():
    entries = sorted(
        p.name for p in PACKAGE.iterdir() if p.name != "__init__.py" and p.name != "__pycache__"
    )
    assert len(entries) <= 13, entries
    contract = (ROOT / "pyproject.toml").read_text()
    for entry in entries:  # every top-level entry has its place in the layer order
        assert f"segkit.{entry.removesuffix('.py')}" in contract, entry


def package_modules() -> dict[Path, list[str]]:
    return {
        pkg: sorted(p.stem for p in pkg.glob("*.py") if p.name != "__init__.py")
        for pkg in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    }


@pytest.mark.parametrize("pkg", list(package_modules()), ids=lambda p: p.name)
def test_each_package_docstring_lists_its_modules(pkg):
    doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text())) or ""
    listed = set(re.findall(r"^- ``(\w+)``(?:, ``(\w+)``)?:", doc, re.M))
    names = {n for pair in listed for n in pair if n}
    assert names == set(package_modules()[pkg]), f"{pkg.name}/__init__.py docstring: {doc}"


def test_the_module_map_lists_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for pkg, modules in package_modules().items():
        section = text.split(f"### `segkit/{pkg.name}/`", 1)
        assert len(section) == 2, f"docs/architecture.md has no section for segkit/{pkg.name}/"
        body = section[1].split("\n### ", 1)[0]
        assert sorted(re.findall(r"^- `(\w+)`:", body, re.M)) == modules, pkg.name
    for module in PACKAGE.glob("*.py"):
        if module.name != "__init__.py":
            assert f"### `segkit/{module.name}`" in text, module.name


def test_old_module_paths_still_import_with_a_warning(monkeypatch):
    for old in ("segkit.checkpoint", "segkit.metrics"):  # imported afresh, as by a user script
        monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match="segkit.checkpoint moved to segkit.io.checkpoint"):
        from segkit.checkpoint import load_model, save_atomic
    with pytest.warns(FutureWarning, match="segkit.metrics moved to segkit.evaluation.metrics"):
        from segkit.metrics import ConfusionMatrix
    from segkit.data import UnetDataset
    from segkit.data.voc import VOCDataset

    assert load_model.__module__ == "segkit.run.models"
    assert save_atomic.__module__ == "segkit.io.checkpoint"
    assert ConfusionMatrix.__module__ == "segkit.evaluation.metrics"
    assert UnetDataset is VOCDataset  # the notes' name
