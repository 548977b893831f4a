"""Dependencies point one way: what each package may import of the project's others.

    contract  <-  client  <-  api_facade
        ^
        +-----  milo_voice (roles, serving, the core CLI)  <-  pytriton_app

The contract knows no one; roles and servers never see the client or the facade; the facade
never sees a role, a server or the registry (it learns of the models from its settings).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("contract", "client", "api_facade", "milo_voice", "pytriton_app", "loadtests")
ALLOWED = {
    "contract": set(),
    "client": {"contract"},
    "api_facade": {"contract", "client"},
    "milo_voice": {"contract"},
    "pytriton_app": {"contract", "milo_voice"},
}


def imported(path: Path) -> set[str]:
    """The top-level names of what ``path`` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def project_imports(package: str) -> dict[str, set[str]]:
    """Per file of ``package``, the project packages it imports."""
    return {
        str(path.relative_to(REPO)): (imported(path) & set(PACKAGES)) - {package}
        for path in sorted((REPO / package).rglob("*.py"))
    }


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_one_above_it(package: str) -> None:
    wrong = {path: sorted(names - ALLOWED[package]) for path, names in project_imports(package).items()}
    assert not {path: names for path, names in wrong.items() if names}


def test_the_contract_needs_no_torch_and_no_server() -> None:
    """The client and the facade image import it: numpy and the standard library only."""
    third_party = set().union(*(imported(path) for path in (REPO / "contract").rglob("*.py")))
    assert (
        third_party - {"__future__", "contract", "numpy", "dataclasses", "enum", "json", "collections", "typing"}
        == set()
    )
