"""The command line's small promises: user-facing help, clean pipes, one-line errors that say what to do."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from coea import cli

REPO = Path(__file__).resolve().parent.parent


def test_help_is_for_users(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "coea cycle --config configs/demo.yaml --workdir workdirs/demo" in out
    assert "exit codes" in out and "WORKDIR/logs" in out
    assert "Thin: parse" not in out and "entry function" not in out  # the developer docstring stays in the code


def test_verbose_works_after_the_command_too():
    args = cli.build_parser().parse_args(["cycle", "--config", "c.yaml", "--workdir", "w", "--verbose", "--json"])
    assert args.verbose and args.json
    assert cli.build_parser().parse_args(["-v", "status", "--workdir", "w"]).verbose


def test_explain_into_a_closed_pipe_exits_quietly():
    """`coea config --explain | head -1`: the reader stops early; no BrokenPipeError traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "coea.cli", "config", "--explain"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    first = proc.stdout.read(40)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert first and "BrokenPipe" not in err and "Traceback" not in err


def test_a_directory_as_config_says_so(capsys):
    code = cli.main(["config", "--config", str(REPO / "configs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "is a directory" in err and "demo.yaml" in err


def test_export_without_pyspark_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyspark" else real(name, *a))
    code = cli.main(["export", "--workdir", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and ".[spark]" in err


def test_readme_commands_table_runs_as_written():
    """Every command in README's Commands table carries the arguments it needs (no bare `coea prompts`)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Commands"):].split("\n\n")[1]
    rows = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `coea")]
    parser = cli.build_parser()
    assert len(rows) >= 10
    for row in rows:
        argv = row.split()[1:]
        argv = [{"K": "1", "N": "2", "DIR": "d", "W": "w", "U": "u"}.get(a, a) for a in argv]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"README command does not parse: {row}") from exc
