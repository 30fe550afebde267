"""Which code a stage run ran: the package version plus a hash of the source files its stage
module imports, directly or through others (read from the source, functions' imports
included), so that editing the CLI or the app does not invalidate every cached training run.

The root package's `__init__` is left out: it is the Python door's façade, importing every
stage for `hm.train(...)`, not code a stage runs. A subpackage's `__init__` counts (its
registrations run), and so do the modules a registry names as its `builtins` (imported
when it is first read). `defaults.toml` counts wherever `config` does.
A stage without a module of its own (`hyrax_mlops.stages.<name>`) hashes the whole package.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "hyrax_mlops"
ROOT = Path(__file__).resolve().parent


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the package under `root`: dotted name -> file."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source, with the
    subpackages they sit in (whose __init__ runs first), the root package left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the package this module is in
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # submodules imported
        elif isinstance(node, ast.keyword) and node.arg == "builtins":  # Registry(builtins=)
            found.update(c.value for c in ast.walk(node.value)
                         if isinstance(c, ast.Constant) and isinstance(c.value, str))
    out = set()
    for module in found:
        parts = module.split(".")
        out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1)
                   if ".".join(parts[:i]) in modules)
    return out


def import_closure(module: str, root: Path = ROOT) -> list[Path]:
    """The files `module` runs when imported and called: itself and every package module it
    imports, transitively (sorted)."""
    modules = _modules(root)
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        todo.extend(_imports(name, modules[name], modules))
    files = {modules[n] for n in seen}
    if f"{PACKAGE}.config" in seen and (root / "defaults.toml").exists():
        files.add(root / "defaults.toml")
    return sorted(files)


@functools.cache
def code_version(stage: str | None = None, root: Path = ROOT) -> str:
    """`<version>+<12 hex>`: a hash of the files stage `stage` runs (`import_closure` of
    `hyrax_mlops.stages.<stage>`), or of the whole package without a stage or such module."""
    from hyrax_mlops._version import __version__

    module = f"{PACKAGE}.stages.{stage}" if stage else None
    if module and module in _modules(root):
        files = import_closure(module, root)
    else:
        files = sorted(p for p in root.rglob("*")
                       if p.suffix in {".py", ".toml"} and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def external_code(cfg, sections) -> str:
    """A hash of the source files of the components `cfg` names in `sections` that live
    outside this package (a plugin's analysis, a model named by import path), so that editing
    one re-runs the stages using it instead of reusing their runs; "" when there are none."""
    import importlib
    import inspect

    from hyrax_mlops.config import REGISTERED_KEYS

    files: set[str] = set()
    for key, (module, attr) in REGISTERED_KEYS.items():
        section, field = key.split(".")
        if section not in sections:
            continue
        value = getattr(getattr(cfg, section), field)
        for name in value if isinstance(value, list) else [value]:
            try:
                if ":" in name:  # a model by import path, package.module:Class
                    path, _, attr_name = name.partition(":")
                    obj = getattr(importlib.import_module(path), attr_name)
                else:
                    obj = getattr(importlib.import_module(module), attr).get(name)
                where = inspect.getmodule(obj)
                if where is not None and not where.__name__.startswith(PACKAGE):
                    files.add(inspect.getsourcefile(obj) or "")
            except Exception:  # noqa: BLE001 - unresolvable here: the stage's check says why
                continue
    files.discard("")
    if not files:
        return ""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(Path(path).read_bytes())
    return f"+ext.{digest.hexdigest()[:12]}"
