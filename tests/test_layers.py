"""The packages are layers: foundation < pretrain < finetune; model_cards builds on foundation only.

An upward import (foundation importing pretrain, pretrain importing finetune, model_cards importing a training
package) couples what should stay separable: read from the source's AST, so lazy imports inside functions count.
"""

from __future__ import annotations

import ast

import pytest
from conftest import REPO_ROOT

ALLOWED = {
    "foundation": {"foundation"},
    "pretrain": {"foundation", "pretrain"},
    "finetune": {"foundation", "pretrain", "finetune"},
    "model_cards": {"foundation", "model_cards"},
}


def imported_packages(path) -> set[tuple[str, int]]:
    """Our top-level packages that `path` imports, with the line of each import (relative imports stay inside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in ALLOWED:
                found.add((top, node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_upward_imports(package: str):
    files = sorted((REPO_ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    upward = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {top}"
        for path in files
        for top, line in sorted(imported_packages(path))
        if top not in ALLOWED[package]
    ]
    assert not upward, f"{package} may import only {sorted(ALLOWED[package])}: " + "; ".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from finetune.refiner import SpectralHead\n    import pretrain.trainer\n")
    assert imported_packages(bad) == {("finetune", 2), ("pretrain", 3)}
