"""The layers of ARCHITECTURE.md hold: the import-linter contracts of pyproject.toml pass, a
contract that the code breaks is reported as broken (so the check can fail), and no
function hides an import of a project module (imports are at the top, where the layers
show)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probes", "llm_fourier", "toy")


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' installs import-linter")
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_the_layer_contracts_are_kept():
    done = lint_imports()
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_a_contract_the_code_breaks_is_reported(tmp_path):
    config = tmp_path / "upside-down.ini"
    config.write_text("[importlinter]\nroot_packages =\n    probes\n    llm_fourier\n"
                      "[importlinter:contract:upside-down]\nname = upside down\n"
                      "type = layers\nlayers =\n    probes\n    llm_fourier\n")
    done = lint_imports("--config", str(config))
    assert done.returncode != 0 and "BROKEN" in done.stdout


def function_level_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Imports of project modules inside functions of ``path``."""
    tree = ast.parse(path.read_text())
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] in PACKAGES]
    return found


def test_no_function_hides_a_project_import():
    hidden = [hit for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
              for hit in function_level_imports(path)]
    assert hidden == []


def test_the_scan_finds_a_hidden_import(tmp_path):
    path = tmp_path / "example.py"
    path.write_text("def f():\n    from llm_fourier import errors\n    import os\n")
    assert function_level_imports(path, tmp_path) == ["example.py:2 llm_fourier"]
