"""Provenance: results record the commit, refuse a dirty tree, and --allow-dirty marks them."""

from __future__ import annotations

import json
import subprocess

import pytest

import coea.simulate.provenance as provenance
from coea.cli import main
from coea.simulate.provenance import DirtyTreeError, check_provenance, git_state

TINY = ["--set", "sim.n_users=20", "--set", "sim.n_categories=12", "--set", "sim.n_groups=2", "--set",
        "sim.core_per_user=2", "--set", "sim.latent_per_user=2", "--set", "sim.days=2", "--set", "sim.warmup_days=2",
        "--set", "sim.seeds=0", "--set", "tracking.backend=none"]


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_state_reads_the_commit_and_the_uncommitted_code_not_the_results(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "git_state", git_state)  # the real one (imported before conftest's fake)
    assert git_state(tmp_path) == (None, [])  # not a git checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "coea").mkdir()
    (tmp_path / "coea" / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    commit, changed = git_state(tmp_path)
    assert len(commit) == 40 and changed == []
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}")  # results are not code
    (tmp_path / "notes.txt").write_text("scratch")  # outside the watched paths
    assert git_state(tmp_path) == (commit, [])
    (tmp_path / "coea" / "a.py").write_text("x = 2\n")
    (tmp_path / "coea" / "b.py").write_text("")
    assert git_state(tmp_path) == (commit, ["coea/a.py", "coea/b.py"])
    with pytest.raises(DirtyTreeError, match="2 uncommitted"):
        check_provenance(False, tmp_path)
    prov = check_provenance(True, tmp_path)
    assert prov.dirty and prov.commit == commit and "allow-dirty" in prov.label()


def test_dirty_tree_is_refused_before_anything_is_written_and_allow_dirty_marks(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(provenance, "git_state", lambda repo=None: ("f" * 40, ["coea/simulate/world.py"]))
    out = tmp_path / "sim"
    rc = main(["simulate", "--config", "configs/sim.yaml", "--out", str(out), "--arms", "exploitation", *TINY])
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("coea:")]
    assert rc == 2 and len(err) == 1 and "uncommitted" in err[0] and "--allow-dirty" in err[0]
    assert not (out / "days.jsonl").exists() and not (out / "results.md").exists()
    rc = main(["simulate", "--config", "configs/sim.yaml", "--out", str(out), "--arms", "exploitation", *TINY,
               "--allow-dirty"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["provenance"]["dirty"] and s["provenance"]["commits"] == ["f" * 40]
    assert "UNCOMMITTED CHANGES" in (out / "results.md").read_text()


def test_clean_results_name_their_commit(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--config", "configs/sim.yaml", "--out", str(out), "--arms", "exploitation", *TINY]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["provenance"] == {"commits": ["0123456789abcdef0123456789abcdef01234567"], "dirty": False,
                               "invocations": 2, "changed": []}  # the run and its report
    assert "Code: commit 0123456789ab." in (out / "results.md").read_text()
