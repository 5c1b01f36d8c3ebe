"""The layout's rules and the code's hygiene, checked by the tools made for it: import-linter holds the import rules
of pyproject.toml ([tool.importlinter]: the events core knows no adapter, adapters never import each other, services
import only the core, no cycles), ruff the style and common bugs, mypy (with the pydantic plugin) the types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_import_rules_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"  # installed beside the interpreter by import-linter
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
