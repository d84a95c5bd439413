"""Layering as import-linter contracts (pyproject.toml [tool.importlinter]); a back-arrow fails the suite."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = {"coea.cli", "coea.evaluate", "coea.exploration", "coea.judge", "coea.simulate"}


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_lint_imports_keeps_every_contract():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_every_coea_module_has_a_layer():
    """A new module under coea/ must be listed as core (the forbidden contract) or be a top-layer module."""
    core = next(c for c in _contracts() if c["name"].startswith("The coea core"))["source_modules"]
    present = {f"coea.{p.stem}" for p in (ROOT / "coea").glob("*.py") if p.stem != "__init__"}
    present |= {f"coea.{p.name}" for p in (ROOT / "coea").iterdir() if (p / "__init__.py").exists()}
    unplaced = sorted(present - set(core) - TOP)
    assert not unplaced, f"place these in pyproject.toml's layer contracts: {unplaced}"
    assert not set(core) & TOP
