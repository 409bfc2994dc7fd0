"""The house rules of labkit's layout, read from the code: which room may import which.

Every module of ``labkit/`` belongs to a room. The core (server, net, tracing, client, db,
errors, processes, etcd, postgres) runs headless: it imports no pictures, widgets, services or grading. Services and
grading never import widgets; grading draws through a hook, never by importing plots.
Every import is read: at the top, inside functions, and the strings handed to
``importlib.import_module`` or ``__import__``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "labkit"

#: room -> the modules (dotted, under labkit) and packages (ending in ".") it holds
ROOMS = {
    "face": ["labkit", "labkit.__main__"],
    "core": ["labkit.server", "labkit.net", "labkit.tracing", "labkit.client", "labkit.db", "labkit.errors",
             "labkit.processes", "labkit.etcd", "labkit.postgres"],
    "plots": ["labkit.plots"],
    "widgets": ["labkit.widgets"],
    "apps": ["labkit.apps."],
    "grading": ["labkit.grading."],
    "bench": ["labkit.bench."],
}

#: room -> the rooms it may import (its own always). Every room but the core may import the face
#: itself (``import labkit``), but not reach a forbidden room through its lazy names.
ALLOWED = {
    "face": {"core", "plots", "widgets", "apps", "grading", "bench"},
    "core": set(),
    "plots": {"face", "core"},
    "widgets": {"face", "core", "plots"},
    "apps": {"face", "core"},
    "grading": {"face", "core", "apps"},
    "bench": {"face", "core", "apps", "plots", "grading"},
}


def _lazy_names() -> dict[str, str]:
    """The face's lazy names (labkit.sequence, labkit.check, ...) -> the module each loads."""
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_LAZY":
            return {key.value: value.elts[0].value for key, value in zip(node.value.keys, node.value.values)}
    raise AssertionError("labkit/__init__.py has no _LAZY table")


LAZY = _lazy_names()


def _module_name(path: pathlib.Path) -> str:
    parts = ["labkit", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str | None:
    for room, members in ROOMS.items():
        for member in members:
            if module == member or (member.endswith(".") and (module + ".").startswith(member)):
                return room
    return None


def imports_of(path: pathlib.Path, module: str | None = None) -> set[str]:
    """Every labkit module ``path`` (the module ``module``) imports, wherever the import stands."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if node.module:
                found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # a submodule imported by name
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "labkit" \
                and node.attr in LAZY:
            found.add(LAZY[node.attr])  # labkit.sequence(...) loads labkit.plots
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in ("import_module", "__import__"):
                found.add(node.args[0].value)
        elif isinstance(node, ast.Dict):  # the face's table of lazy names: {"name": ("labkit.module", ...)}
            for value in node.values:
                if isinstance(value, ast.Tuple) and value.elts and isinstance(value.elts[0], ast.Constant) \
                        and str(value.elts[0].value).startswith("labkit"):
                    found.add(value.elts[0].value)
    lazy = {LAZY[name.split(".")[1]] for name in found if name.count(".") == 1 and name.split(".")[1] in LAZY}
    return {name for name in found | lazy if name == "labkit" or name.startswith("labkit.")}


MODULES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_every_module_has_a_room(path):
    assert room_of(_module_name(path)) is not None, f"place {_module_name(path)} in a room of tests/test_layout.py"


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_no_import_crosses_a_forbidden_arrow(path):
    here = room_of(_module_name(path))
    wrong = []
    for name in sorted(imports_of(path)):
        there = room_of(name)
        if there is None:  # a name imported from a module (labkit.apps.kit.Faults): its module's room
            there = room_of(name.rpartition(".")[0])
        if there is not None and there != here and there not in ALLOWED[here]:
            wrong.append(f"{name} ({there})")
    assert not wrong, f"{_module_name(path)} ({here}) may not import {', '.join(wrong)}"


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The reader itself: a top-level import, one inside a function, and an import_module string."""
    sample = tmp_path / "sample.py"
    sample.write_text("import labkit.widgets\n\ndef f():\n    from ..plots import sequence\n"
                      "    import importlib\n    importlib.import_module('labkit.apps.peer')\n")
    assert {"labkit.widgets", "labkit.plots", "labkit.plots.sequence", "labkit.apps.peer"} <= \
        imports_of(sample, "labkit.grading.sample")
