"""``kvdisco.client`` is a library applications install without the server: it may import only the
standard library, aiohttp, msgpack and itself, never kvdisco.raft, kvdisco.mvcc or kvdisco.api.

Checked from source with ``ast`` (the scanner of test_layering), so a bad import is caught even
in a branch that never runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_layering import ROOT, _package_of, scan_imports

CLIENT_DIR = ROOT / "kvdisco" / "client"

#: Third-party distributions the client may depend on.
ALLOWED_THIRD_PARTY = frozenset({"aiohttp", "msgpack"})


def client_import_problems(source: str, package: str, filename: str = "<string>") -> list[str]:
    problems = []
    for ref in scan_imports(source, package, filename):
        parts = ref.module.split(".")
        top = parts[0]
        if top == "kvdisco":
            if parts[:2] != ["kvdisco", "client"]:
                problems.append(f"line {ref.lineno}: imports {ref.module} (server code)")
        elif top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY and top != "__future__":
            problems.append(f"line {ref.lineno}: imports third-party {ref.module}")
    return problems


def test_checker_flags_server_and_third_party_imports() -> None:
    pkg = "kvdisco.client"
    assert client_import_problems("from ..raft import node\n", pkg) == ["line 1: imports kvdisco.raft (server code)"]
    assert client_import_problems("import kvdisco.mvcc\n", pkg) == ["line 1: imports kvdisco.mvcc (server code)"]
    assert client_import_problems("def f():\n    from kvdisco.api import app\n", pkg)[0].startswith("line 2")
    assert client_import_problems("import requests\n", pkg) == ["line 1: imports third-party requests"]
    clean = "import asyncio\nimport aiohttp\nimport msgpack\nfrom ._types import Key\nfrom kvdisco.client import x\n"
    assert client_import_problems(clean, pkg) == []


def _client_files() -> list[Path]:
    return sorted(CLIENT_DIR.rglob("*.py"))


def test_client_package_exists_and_is_typed() -> None:
    assert (CLIENT_DIR / "__init__.py").is_file()
    assert (CLIENT_DIR / "py.typed").is_file(), "kvdisco/client/py.typed marks the client as typed (PEP 561)"


@pytest.mark.parametrize("path", _client_files(), ids=lambda p: p.name)
def test_client_imports_only_stdlib_aiohttp_msgpack(path: Path) -> None:
    problems = client_import_problems(path.read_text(encoding="utf-8"), _package_of(path), str(path))
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)
