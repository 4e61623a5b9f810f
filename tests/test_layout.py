"""The package's shape: layers, no import cycles, small units, no side effects on import.

Read from the sources with ``ast`` (nothing is imported to build the graph), so a
cycle or a layer violation fails here before it fails at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"media": "v2v.media", "worker": "v2v.worker", "signaling": "v2v.signaling"}
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports at module level (not inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    base = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in tree.body:
        stmts: list[ast.stmt] = [node]
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports do not run
            test = node.test
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                continue
        if isinstance(node, ast.Try):
            stmts = list(node.body)
        for st in stmts:
            if isinstance(st, ast.Import):
                for alias in st.names:
                    add(alias.name)
            elif isinstance(st, ast.ImportFrom):
                if st.level:
                    pkg = base
                    for _ in range(st.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    mod = f"{pkg}.{st.module}" if st.module else pkg
                else:
                    mod = st.module or ""
                for alias in st.names:
                    add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in known else mod)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_layers_point_one_way() -> None:
    """signaling -> worker -> media: media imports neither, worker never imports signaling."""
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if mod.startswith("v2v.media") and not dep.startswith("v2v.media"):
                bad.append(f"{mod} -> {dep}")
            if mod.startswith("v2v.worker") and dep.startswith("v2v.signaling"):
                bad.append(f"{mod} -> {dep}")
    assert not bad, bad


def test_no_import_cycles() -> None:
    graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle of concern
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, cycles


def test_files_and_functions_are_small() -> None:
    """No file over 600 lines; no function over 60 without a reason in its docstring."""
    big_files, big_funcs = [], []
    for name, path in _modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            big_files.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if length > MAX_FUNCTION_LINES and "long:" not in doc.lower():
                    big_funcs.append(f"{name}.{node.name}: {length} lines")
    assert not big_files, big_files
    assert not big_funcs, big_funcs


def test_importing_the_package_has_no_side_effects() -> None:
    """Importing every module starts no thread, patches no aiortc, prints nothing."""
    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    code = (
        "import importlib, threading, sys\n"
        "import aiortc.rtp as r\n"
        "orig = r.compute_audio_level_dbov\n"
        f"for m in {names!r}: importlib.import_module(m)\n"
        "from v2v.signaling import aiortc_tuning\n"
        "assert r.compute_audio_level_dbov is orig, 'aiortc patched on import'\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert not aiortc_tuning.installed()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", out.stdout


def test_package_all_names_existing_submodules() -> None:
    """Each code package's ``__all__`` names its public submodules, and only existing ones."""
    for folder, pkg in PACKAGES.items():
        tree = ast.parse((ROOT / folder / "__init__.py").read_text())
        names = [
            elt.value
            for node in tree.body
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            for elt in getattr(node.value, "elts", [])
            if isinstance(elt, ast.Constant)
        ]
        assert names, f"{pkg}: no __all__"
        for name in names:
            assert (ROOT / folder / f"{name}.py").is_file() or (ROOT / folder / name / "__init__.py").is_file(), \
                f"{pkg}.__all__ names {name!r}, which is no submodule"
