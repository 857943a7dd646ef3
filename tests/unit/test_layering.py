"""The import rules that keep kvdisco's layers apart, checked from source with ``ast``.

1. The Raft core is sans-I/O: its modules import no asyncio, socket, clock, randomness,
   threads, selectors or os. Only the driver and the storage/transport modules may.
2. ``kvdisco.raft`` is a library of its own: nothing in it imports the rest of kvdisco.

Nothing here imports kvdisco, so the rules are checked even while a module does not import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAFT_DIR = ROOT / "kvdisco" / "raft"

#: The sans-I/O core. Modules not written yet are simply not checked;
#: the two that everything else builds on must exist.
CORE_MODULES = (
    "_core.py",
    "_log.py",
    "_progress.py",
    "_quorum.py",
    "_rawnode.py",
    "_messages.py",
    "_codec.py",
    "limits.py",
    "errors.py",
)
REQUIRED_CORE_MODULES = ("_messages.py", "_codec.py")

#: Top-level modules the core must not import: each is I/O, a clock, randomness or concurrency.
FORBIDDEN_IN_CORE = frozenset({"asyncio", "socket", "time", "random", "threading", "selectors", "os"})

#: Calls that import by name at run time; a string constant argument counts as an import.
_DYNAMIC_IMPORTERS = frozenset({"__import__", "import_module"})


@dataclass(frozen=True, slots=True)
class ImportRef:
    lineno: int
    #: Absolute dotted name, relative imports resolved against the importing module's package.
    module: str


class ImportBeyondTopLevel(Exception):
    """A relative import climbs above the top-level package."""


def _resolve_relative(package: str, level: int, module: str | None) -> str:
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        raise ImportBeyondTopLevel(f"{level} dots from package {package!r}")
    base = parts[: len(parts) - (level - 1)]
    if module:
        base.append(module)
    return ".".join(base)


def scan_imports(source: str, package: str, filename: str = "<string>") -> list[ImportRef]:
    """Every import in ``source`` at any nesting level (functions, ``if TYPE_CHECKING``, try blocks).

    ``package`` is the dotted package that contains the module, used to resolve relative imports.
    ``from . import x`` yields ``package.x``: ``x`` may be a submodule.
    """
    refs: list[ImportRef] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            refs.extend(ImportRef(node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                refs.append(ImportRef(node.lineno, node.module))
            else:
                base = _resolve_relative(package, node.level, node.module)
                if node.module:
                    refs.append(ImportRef(node.lineno, base))
                else:
                    refs.extend(ImportRef(node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            first = node.args[0]
            if name in _DYNAMIC_IMPORTERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                refs.append(ImportRef(node.lineno, first.value))
    return refs


def forbidden_core_imports(source: str, package: str, filename: str = "<string>") -> list[ImportRef]:
    return [ref for ref in scan_imports(source, package, filename) if ref.module.split(".")[0] in FORBIDDEN_IN_CORE]


def imports_outside_raft(source: str, package: str, filename: str = "<string>") -> list[str]:
    """Imports of ``kvdisco`` or ``kvdisco.X`` for any X other than ``raft``, as readable problems."""
    try:
        refs = scan_imports(source, package, filename)
    except ImportBeyondTopLevel as exc:
        return [f"relative import beyond the top-level package: {exc}"]
    problems = []
    for ref in refs:
        parts = ref.module.split(".")
        if parts[0] == "kvdisco" and (len(parts) < 2 or parts[1] != "raft"):
            problems.append(f"line {ref.lineno}: imports {ref.module}")
    return problems


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts.pop()  # the module itself, or __init__: either way the package is what remains
    return ".".join(parts)


def _raft_files() -> list[Path]:
    return sorted(RAFT_DIR.rglob("*.py"))


def _existing_core_files() -> list[Path]:
    return [RAFT_DIR / name for name in CORE_MODULES if (RAFT_DIR / name).is_file()]


# --- self-checks: the scanner must be able to see what the rules forbid ---------------------------


def test_scanner_sees_nested_and_aliased_imports() -> None:
    source = (
        "from __future__ import annotations\n"
        "import msgpack\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import asyncio\n"
        "def f() -> None:\n"
        "    try:\n"
        "        from os.path import join\n"
        "    except ImportError:\n"
        "        import time as clock\n"
        "class C:\n"
        "    def g(self) -> None:\n"
        "        import random, socket\n"
    )
    found = {ref.module for ref in forbidden_core_imports(source, "kvdisco.raft")}
    assert found == {"asyncio", "os.path", "time", "random", "socket"}


def test_scanner_sees_dynamic_imports() -> None:
    source = "import importlib\nm = importlib.import_module('threading')\nn = __import__('selectors')\n"
    found = {ref.module for ref in forbidden_core_imports(source, "kvdisco.raft")}
    assert found == {"threading", "selectors"}


def test_scanner_passes_clean_source() -> None:
    source = "import enum\nimport msgpack\nfrom dataclasses import dataclass\nfrom ._messages import Entry\n"
    assert forbidden_core_imports(source, "kvdisco.raft") == []
    assert imports_outside_raft(source, "kvdisco.raft") == []


def test_scanner_resolves_relative_imports() -> None:
    pkg = "kvdisco.raft"
    assert [r.module for r in scan_imports("from ._codec import pack\n", pkg)] == ["kvdisco.raft._codec"]
    assert [r.module for r in scan_imports("from . import errors\n", pkg)] == ["kvdisco.raft.errors"]
    assert [r.module for r in scan_imports("from ..mvcc import store\n", pkg)] == ["kvdisco.mvcc"]
    assert [r.module for r in scan_imports("from .. import api\n", pkg)] == ["kvdisco.api"]
    assert [r.module for r in scan_imports("from .. import x\n", "kvdisco.raft.wal")] == ["kvdisco.raft.x"]
    assert [r.module for r in scan_imports("from ... import mvcc\n", "kvdisco.raft.wal")] == ["kvdisco.mvcc"]


def test_scanner_flags_escapes_from_raft() -> None:
    pkg = "kvdisco.raft"
    assert imports_outside_raft("from ..mvcc import store\n", pkg) == ["line 1: imports kvdisco.mvcc"]
    assert imports_outside_raft("def f():\n    import kvdisco.api.app\n", pkg) == ["line 2: imports kvdisco.api.app"]
    assert imports_outside_raft("import kvdisco\n", pkg) == ["line 1: imports kvdisco"]
    assert imports_outside_raft("from kvdisco import registry\n", pkg) == ["line 1: imports kvdisco"]
    assert imports_outside_raft("from ... import x\n", pkg)[0].startswith("relative import beyond")
    # Allowed: the package itself, absolutely or relatively, from a subpackage too.
    assert imports_outside_raft("import kvdisco.raft\nfrom kvdisco.raft import errors\n", pkg) == []
    assert imports_outside_raft("from .. import limits\nfrom .._codec import pack\n", "kvdisco.raft.wal") == []


# --- the rules, on the real tree -------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED_CORE_MODULES)
def test_required_core_modules_exist(name: str) -> None:
    assert (RAFT_DIR / name).is_file(), f"kvdisco/raft/{name} is missing"


@pytest.mark.parametrize("path", _existing_core_files(), ids=lambda p: p.name)
def test_core_module_is_sans_io(path: Path) -> None:
    bad = forbidden_core_imports(path.read_text(encoding="utf-8"), _package_of(path), str(path))
    assert not bad, (
        f"{path.relative_to(ROOT)} is part of the sans-I/O Raft core but imports "
        + ", ".join(f"{ref.module} (line {ref.lineno})" for ref in bad)
        + ". Move the I/O into the driver (node.py) or storage/transport modules."
    )


@pytest.mark.parametrize("path", _raft_files(), ids=lambda p: str(p.relative_to(RAFT_DIR)))
def test_raft_imports_nothing_else_from_kvdisco(path: Path) -> None:
    problems = imports_outside_raft(path.read_text(encoding="utf-8"), _package_of(path), str(path))
    assert not problems, f"{path.relative_to(ROOT)} reaches outside kvdisco.raft: " + "; ".join(problems)
