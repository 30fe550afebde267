"""Imports flow one way: no module of the package imports one that imports it back (at any
depth, functions' imports included), and nothing below the Python door imports the door."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import hyrax_mlops

ROOT = Path(hyrax_mlops.__file__).resolve().parent
DOORS = {"hyrax_mlops", "hyrax_mlops.api", "hyrax_mlops.cli"}  # the façade and what uses it


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["hyrax_mlops", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> nx.DiGraph:
    """module -> each package module whose names it imports (`from pkg import name` is an
    edge to pkg's __init__ unless `name` is a submodule)."""
    mods = modules()
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_bytes())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    keep = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(keep + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            graph.add_edges_from((name, t) for t in targets if t in mods and t != name)
    return graph


def test_there_are_no_import_circles():
    circles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert circles == []


def test_nothing_below_the_python_door_imports_it():
    graph = import_graph()
    users = {m for door in ("hyrax_mlops", "hyrax_mlops.api") for m in graph.predecessors(door)}
    assert users <= DOORS, sorted(users - DOORS)
    assert len(graph) > 80  # the walk saw the package
