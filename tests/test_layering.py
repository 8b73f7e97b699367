"""The import graph points one way (README "Layout"): every import runs down the floors, no circle at file or
folder level, the CLI is imported by nothing, and the wheel installs exactly one top-level name."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "nextstep_trt"
# folder -> (import name, floor). A part may import its own floor's modules and any floor below, never above;
# serve and bench share a floor and import neither each other.
PARTS = {
    "core": ("nextstep_trt.core", 0),
    "nextstep_ref": ("nextstep_trt.ref", 1),
    "export": ("nextstep_trt.export", 2),
    "runtime": ("nextstep_trt.runtime", 3),
    "engines": ("nextstep_trt.engines", 4),
    "serve": ("nextstep_trt.serve", 5),
    "bench": ("nextstep_trt.bench", 5),
    "nextstep_trt": ("nextstep_trt", 6),          # the CLI: cli.py and commands/
}
OLD_TOP_NAMES = {"nextstep_ref", "export", "runtime", "engines", "core", "serve", "bench"}


def _modules() -> dict[str, Path]:
    """Every module of the package, by its installed name."""
    out = {}
    for folder, (name, _) in PARTS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if folder == "nextstep_trt" and rel and rel[0] in {p for p in PARTS if p != "nextstep_trt"}:
                continue
            parts = [name, *rel]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _part(module: str) -> str:
    """The folder a module lives in (the longest matching import-name prefix)."""
    best = max((f for f, (n, _) in PARTS.items() if module == n or module.startswith(n + ".")),
               key=lambda f: len(PARTS[f][0]))
    return best


def _imports(module: str, path: Path) -> set[str]:
    """Every project module ``module`` imports, lazy (function-level) imports included."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for mod, path in mods.items():
        graph[mod] = {m for m in _imports(mod, path) if m in mods and m != mod}
    return graph


def test_no_module_imports_an_old_top_level_name():
    bad = []
    for folder in [*PARTS, "tests", "scripts"]:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                        if n.split(".")[0] in OLD_TOP_NAMES]
    assert not bad, "\n".join(bad)


def test_every_import_runs_down_the_floors():
    up = []
    for mod, targets in _graph().items():
        src = _part(mod)
        for t in targets:
            dst = _part(t)
            if src == dst:
                continue
            floor_src, floor_dst = PARTS[src][1], PARTS[dst][1]
            if floor_dst >= floor_src:
                up.append(f"{mod} ({src}, floor {floor_src}) imports {t} ({dst}, floor {floor_dst})")
    assert not up, "imports that run up or sideways:\n" + "\n".join(sorted(up))


def test_the_cli_is_imported_by_nothing_and_core_by_everything_below_it():
    cli = ("nextstep_trt.cli", "nextstep_trt.commands")
    bad = [f"{m} imports {t}" for m, ts in _graph().items() if not m.startswith(cli)
           for t in ts if t.startswith(cli)]
    assert not bad, bad
    root_init = (ROOT / "nextstep_trt" / "__init__.py").read_text()
    assert "import" not in root_init, "nextstep_trt/__init__.py must stay import-free (every part loads it)"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_circle_between_files_or_folders():
    graph = _graph()
    # a package's __init__ importing its own submodules is not a circle of meaning: drop parent -> child edges
    files = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    assert not _cycles(files), f"file-level import circles: {_cycles(files)}"
    folders: dict[str, set[str]] = {}
    for m, ts in graph.items():
        folders.setdefault(_part(m), set()).update(_part(t) for t in ts if _part(t) != _part(m))
    assert not _cycles(folders), f"folder-level import circles: {_cycles(folders)}"


def test_pyproject_lists_every_package_folder():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {k: v for k, v in tool["package-dir"].items()} == {n: f for f, (n, _) in PARTS.items()}
    expected = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert set(tool["packages"]) == expected


def test_the_wheel_adds_one_top_level_name(tmp_path):
    src = tmp_path / "src"                  # a copy, so setuptools' build/ folder never lands in the checkout
    src.mkdir()
    for name in ["pyproject.toml", "README.md", *PARTS]:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                           str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {PKG}, tops
    shipped = {n for n in names if n.endswith(".py")}
    expected = {"/".join(m.split(".")) + ("/__init__.py" if p.name == "__init__.py" else ".py")
                for m, p in _modules().items()}
    assert expected <= shipped, sorted(expected - shipped)


def test_every_module_imports():
    """Catches a relative import left pointing at a module that moved."""
    import importlib

    failed = []
    for mod in sorted(_modules()):
        try:
            importlib.import_module(mod)
        except Exception as err:  # report every broken module at once
            failed.append(f"{mod}: {type(err).__name__}: {err}")
    assert not failed, "\n".join(failed)
