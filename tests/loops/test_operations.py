"""Operations end to end on the tiny world: refused rounds, retention, rollback, status, failures and exit codes.

One module-scoped history (about 30 s on one core) is read by the first tests:

    round 0  bootstrapped
    round 1  promoted                      (base 0)
    round 2  refused by the guardrail      (base 1)
    round 3  promoted                      (base 1: the promoted round, not refused round 2)
    round 4  promoted, pco.anchor: round0  (base 3)
    rollback --to 3
    round 5  promoted                      (base 3: the rolled-back-to round)

with ``cycle.keep_rounds: 2``, so retention expires rounds 1, 2 and 3 along the way while every later round still
trains. The failure tests start from a copy of its round 0.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from coea.cli import main
from coea.rounds import novelty_adapter, relevance_model_dir
from coea.workdir import read_json, round_dir
from loops.retention import rounds_on_disk
from loops.state import read_state, record_round, round_entry, workdir_lock, write_state
from storage.kv import KVStore

KEEP = 2


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    import copy

    c = copy.deepcopy(tiny_cfg)
    c.cycle.keep_rounds = KEEP
    c.cycle.replay_days = 1.0  # six one-day rounds fit in the tiny world's timeline after round 0
    return c


@pytest.fixture(scope="module")
def history(cfg, tmp_path_factory):
    import copy

    import loops.cycle as cycle
    import loops.serving as serving

    workdir = tmp_path_factory.mktemp("ops")
    calls: dict[int, list[tuple[int, int]]] = {}
    real_load = cycle.load_models

    def spy(cfg_, workdir_, novelty_round, relevance_round, device):
        calls.setdefault(current[0], []).append((novelty_round, relevance_round))
        return real_load(cfg_, workdir_, novelty_round, relevance_round, device)

    current = [1]
    snap: dict = {"calls": calls}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cycle, "load_models", spy)
        snap[1] = cycle.run_cycle(cfg, workdir)
        current[0] = 2
        with pytest.MonkeyPatch.context() as refuse:
            refuse.setattr(cycle, "guardrail", lambda *a: (False, "guardrail: refused by the test"))
            snap[2] = cycle.run_cycle(cfg, workdir)
        snap["after_2"] = {"promoted": read_state(workdir)["promoted_round"], "kv": KVStore(workdir).current_round(),
                           "on_disk": rounds_on_disk(workdir)}
        current[0] = 3
        snap[3] = cycle.run_cycle(cfg, workdir)
        snap["after_3"] = {"on_disk": rounds_on_disk(workdir), **_files(workdir, 3)}
        current[0] = 4
        anchored = copy.deepcopy(cfg)
        anchored.pco.anchor = "round0"
        snap[4] = cycle.run_cycle(anchored, workdir)
        snap["after_4"] = {"on_disk": rounds_on_disk(workdir), "kv": KVStore(workdir).list_rounds(),
                           **_files(workdir, 4)}
        snap["rollback"] = serving.rollback(workdir, 3)
        current[0] = 5
        snap[5] = cycle.run_cycle(cfg, workdir)
    return workdir, snap


def _files(workdir, k):
    """What a round recorded about its base, read before retention may expire the round."""
    rp = round_dir(workdir, k)
    return {"pco": read_json(rp / "pco" / "metrics.json"), "pco_manifest": read_json(rp / "pco" / "manifest.json"),
            "relevance_manifest": read_json(rp / "relevance" / "manifest.json"),
            "metrics": read_json(rp / "metrics.json")}


def test_a_refused_round_keeps_the_promoted_round_served(history):
    workdir, snap = history
    assert snap[1].status == "promoted" and snap[2].status == "refused" and not snap[2].promoted
    assert snap["after_2"]["promoted"] == 1 and snap["after_2"]["kv"] == 1
    entry = round_entry(read_state(workdir), 2)
    assert entry["status"] == "refused" and entry["base"] == 1 and "refused by the test" in entry["reason"]


def test_the_round_after_a_refusal_starts_every_model_from_the_promoted_round(history):
    workdir, snap = history
    assert snap[3].base == 1 and snap[3].status == "promoted"
    # candidates: round 1's Novelty LLM and the Relevance LLM round 3 kept (updated from round 1's), not round 2's
    assert snap["calls"][3][0] == (1, 3)
    assert snap["calls"][3][-2:] == [(3, 3), (1, 1)]  # validation: the new round's models, then the promoted ones
    files = snap["after_3"]
    assert files["pco"]["policy_start"] == str(novelty_adapter(workdir, 1))
    assert files["pco"]["reference"] == str(novelty_adapter(workdir, 1))  # anchor previous = the previous *promoted*
    assert files["pco_manifest"]["base_round"] == 1
    relevance = files["relevance_manifest"]
    assert relevance["start_model"] == str(relevance_model_dir(workdir, 1)) and relevance["base_round"] == 1
    assert files["metrics"]["cycle/base_round"] == 1
    assert round_entry(read_state(workdir), 3)["base"] == 1


def test_anchor_round0_uses_round_0_as_the_reference(history):
    workdir, snap = history
    pco = snap["after_4"]["pco"]
    assert pco["policy_start"] == str(novelty_adapter(workdir, 3))
    assert pco["reference"] == str(novelty_adapter(workdir, 0))


def test_retention_expires_whole_rounds_and_later_rounds_still_train(history):
    workdir, snap = history
    assert snap["after_2"]["on_disk"] == [0, 1, 2]  # newest 2 finished (1, 2); nothing to expire yet
    assert snap["after_3"]["on_disk"] == [0, 2, 3]  # round 1 was round 3's base, and expired only after it
    assert snap["after_4"]["on_disk"] == [0, 3, 4] and snap["after_4"]["kv"] == [3, 4]
    assert snap[5].status == "promoted"  # round 0's base model, tokenizer and DSIE survived every expiry
    assert rounds_on_disk(workdir) == [0, 4, 5]  # round 3 (rolled back to, then superseded) went after round 5
    state = read_state(workdir)
    assert [r["round"] for r in state["rounds"] if r.get("expired")] == [1, 2, 3]
    assert not (workdir / "kv" / "001").exists() and not round_dir(workdir, 2).exists()


def test_a_cycle_after_a_rollback_starts_from_the_rolled_back_round(history):
    workdir, snap = history
    assert snap["rollback"] == 4
    assert snap[5].base == 3 and snap["calls"][5][0] == (3, 5)
    assert read_json(round_dir(workdir, 5) / "pco" / "metrics.json")["policy_start"] == str(novelty_adapter(workdir, 3))


def test_status_shows_rollbacks_and_disk_truthfully(history, capsys):
    workdir, _ = history
    assert main(["status", "--workdir", str(workdir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    by_round = {r["round"]: r for r in status["rounds"]}
    assert status["promoted_round"] == 5
    assert [k for k, r in by_round.items() if r["promoted_now"]] == [5]
    assert by_round[4]["state"] == "was promoted" and by_round[4]["was_promoted"]
    assert [k for k, r in by_round.items() if r["state"] == "expired"] == [1, 2, 3]
    assert by_round[5]["base"] == 3 and by_round[5]["attempts"] == 1
    assert status["rollbacks"][0] == {**status["rollbacks"][0], "from": 4, "to": 3}
    kept = [k for k, r in by_round.items() if r["on_disk"]]
    assert kept == [0, 4, 5] and all(by_round[k]["disk_bytes"] > 0 for k in kept)
    assert status["disk"]["total_bytes"] >= sum(r["disk_bytes"] for r in status["rounds"])
    assert status["rollback_offers"] == [4] and status["lock"] == {"held": False, "holder": None}
    assert main(["status", "--workdir", str(workdir)]) == 0
    text = capsys.readouterr().out
    lines = {int(line.split()[0]): line for line in text.splitlines() if line.strip()[:1].isdigit()}
    assert "promoted now" in lines[5] and "was promoted" in lines[4] and "promoted now" not in lines[4]
    assert "rounds on offer: 4" in text and "disk" in text


def test_status_after_rollback_names_it(history, tmp_path, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(history[0], workdir, symlinks=True)
    assert main(["rollback", "--workdir", str(workdir), "--to", "4"]) == 0
    capsys.readouterr()
    assert main(["status", "--workdir", str(workdir)]) == 0
    text = capsys.readouterr().out
    assert "round 4 (rolled back from round 5" in text
    lines = {int(line.split()[0]): line for line in text.splitlines() if line.strip()[:1].isdigit()}
    assert "promoted now" in lines[4] and "was promoted" in lines[5] and "promoted now" not in lines[5]
    for bad, why in ((3, "expired by retention"), (0, "no KV table"), (4, "already the promoted round"),
                     (42, "does not exist")):
        assert main(["rollback", "--workdir", str(workdir), "--to", str(bad)]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("coea:")]
        assert len(err) == 1 and why in err[0]  # one line (stderr may name the command's log file before it)


def test_status_shows_interrupted_and_in_progress_rounds(history, tmp_path, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(history[0], workdir, symlinks=True)
    record_round(workdir, 6, "running", attempts=1, max_attempts=3, base=5)
    (round_dir(workdir, 6) / "data").mkdir(parents=True)
    (round_dir(workdir, 6) / ".candidates.tmp").mkdir()
    assert main(["status", "--workdir", str(workdir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rounds"][-1]
    assert row["state"] == "interrupted" and row["stages_done"] == ["data"] and row["stages_unfinished"] == ["candidates"]
    with workdir_lock(workdir):
        assert main(["status", "--workdir", str(workdir), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["rounds"][-1]["state"] == "in progress"
        assert status["lock"]["held"] and "pid=" in status["lock"]["holder"]
        assert main(["status", "--workdir", str(workdir)]) == 0
        assert "lock      held by pid=" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["missing", "not-coea", "file"])
def test_status_of_a_wrong_workdir_is_an_error(tmp_path, capsys, kind):
    path = tmp_path / "nope"
    if kind == "not-coea":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif kind == "file":
        path.write_text("x")
    assert main(["status", "--workdir", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err  # a non-coea path gets no log file: one line


# ------------------------------------------------------------------------------------------------ failures


@pytest.fixture
def fresh(history, cfg, tmp_path):
    """A copy of the history's round 0 only, and the tiny config as a file: round 1 is next."""
    workdir = tmp_path / "w"
    shutil.copytree(round_dir(history[0], 0), round_dir(workdir, 0))
    state = read_state(history[0])
    write_state(workdir, {**state, "promoted_round": None, "rollbacks": [], "retention": None,
                          "rounds": [r for r in state["rounds"] if r["round"] == 0]})
    path = tmp_path / "tiny.yaml"
    cfg.save(path)
    return workdir, ["--config", str(path), "--workdir", str(workdir), "--set", "cycle.max_attempts=2"]


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_failing_round_logs_its_traceback_stops_at_the_limit_and_retries_on_request(fresh, monkeypatch, capsys):
    workdir, args = fresh
    monkeypatch.setenv("COEA_FAULT", "pco:start")
    assert main(["cycle", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    log1 = round_dir(workdir, 1) / "failure-1.log"
    assert err == f"coea: cycle failed: InjectedFault: injected fault at pco:start (traceback: {log1})"
    assert "Traceback (most recent call last)" in log1.read_text() and "fault_point" in log1.read_text()

    assert main(["cycle", *args]) == 5  # the second failure is the last allowed attempt
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("coea: cycle stopped: round 1 failed 2 of cycle.max_attempts=2 attempts")
    assert "failure-2.log" in err and "coea cycle --retry" in err

    assert main(["cycle", *args]) == 5  # not retried blindly: nothing runs
    assert not (round_dir(workdir, 1) / "failure-3.log").exists()
    capsys.readouterr()
    assert main(["status", "--workdir", str(workdir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rounds"][1]
    assert row["state"] == "stopped" and row["attempts"] == 2 and len(row["failures"]) == 2

    monkeypatch.delenv("COEA_FAULT")  # "fixed"
    lines = _Lines()
    logging.getLogger("coea").addHandler(lines)
    try:
        assert main(["cycle", *args, "--retry"]) in (0, 4)
    finally:
        logging.getLogger("coea").removeHandler(lines)
    entry = round_entry(read_state(workdir), 1)
    assert entry["status"] in ("promoted", "refused") and entry["attempts"] == 1 and len(entry["failures"]) == 2
    skipped = [line for line in lines.lines if "finished in an earlier run; skipping it" in line]
    assert skipped == [f"round 1: stage {s} finished in an earlier run; skipping it"
                       for s in ("data", "relevance", "candidates", "kv")]


def test_retry_fresh_redoes_the_finished_stages(fresh, monkeypatch, capsys):
    workdir, args = fresh
    monkeypatch.setenv("COEA_FAULT", "pco:start")
    assert main(["cycle", *args, "--set", "cycle.max_attempts=1"]) == 5
    assert (round_dir(workdir, 1) / "candidates").is_dir() and 1 in KVStore(workdir).list_rounds()
    monkeypatch.setenv("COEA_FAULT", "candidates:start")  # fails only if candidates really run again
    assert main(["cycle", *args, "--fresh"]) == 1  # --fresh implies --retry: attempt 1 of 2 again
    rp = round_dir(workdir, 1)
    assert "pco:start" in (rp / "failure-1.log").read_text()  # the earlier traceback survives --fresh
    assert "candidates:start" in (rp / "failure-2.log").read_text()  # numbered on, never overwritten
    assert 1 not in KVStore(workdir).list_rounds()  # the staged KV version was deleted
    capsys.readouterr()


def test_rounds_stops_at_the_attempt_limit_with_the_worst_code(fresh, monkeypatch, capsys):
    workdir, args = fresh
    monkeypatch.setenv("COEA_FAULT", "pco:start")
    assert main(["rounds", "--n", "4", *args]) == 5
    out = capsys.readouterr().out
    assert "rounds: 2 of 4 cycles ran; exit codes [1, 5]; exit 5" in out


def test_nothing_new_exits_0_with_one_line(history, cfg, tmp_path, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(history[0], workdir, symlinks=True)
    path = tmp_path / "tiny.yaml"
    cfg.save(path)
    # the first cycle's window reaches the end of the data; the next one has nothing new
    assert main(["cycle", "--config", str(path), "--workdir", str(workdir), "--set", "cycle.replay_days=1000"]) == 0
    capsys.readouterr()
    before = read_state(workdir)
    rc = main(["cycle", "--config", str(path), "--workdir", str(workdir), "--set", "cycle.replay_days=1000"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1 and out[0].startswith("nothing new")
    assert read_state(workdir) == before  # nothing ran, nothing counted


def test_a_held_lock_exits_3(fresh, capsys):
    workdir, args = fresh
    with workdir_lock(workdir):
        assert main(["cycle", *args]) == 3
        assert "another cycle holds" in capsys.readouterr().err
        assert main(["rounds", "--n", "3", *args]) == 3
        assert "rounds: 1 of 3 cycles ran; exit codes [3]" in capsys.readouterr().out


def test_an_unfinished_round_starts_over_when_a_rollback_changed_its_base(history, cfg, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(history[0], workdir, symlinks=True)
    path = tmp_path / "tiny.yaml"
    cfg.save(path)
    args = ["cycle", "--config", str(path), "--workdir", str(workdir)]
    monkeypatch.setenv("COEA_FAULT", "pco:start")
    assert main(args) == 1  # round 6 fails after its candidates were scored by round 5's models
    assert round_entry(read_state(workdir), 6)["base"] == 5 and (round_dir(workdir, 6) / "candidates").is_dir()
    assert main(["rollback", "--workdir", str(workdir), "--to", "4"]) == 0
    monkeypatch.setenv("COEA_FAULT", "candidates:start")  # fails only if round 6's candidates are scored again
    assert main(args) == 1
    entry = round_entry(read_state(workdir), 6)
    assert entry["base"] == 4 and "candidates:start" in entry["failures"][-1]["error"]
    assert 6 not in KVStore(workdir).list_rounds()
    capsys.readouterr()


def test_a_round_whose_candidates_all_score_alike_carries_the_novelty_adapter_forward(fresh, monkeypatch, capsys):
    """A Relevance LLM whose calibration has slope 0 (it ranked held-out clicks below non-clicks) scores every
    candidate alike: no DPO pair exists. That round has nothing to learn, so it must not fail (it would fail on
    every retry of the same window and stop the cron at cycle.max_attempts): the base adapter carries forward."""
    import numpy as np

    from coea.relevance import Calibration

    workdir, args = fresh
    monkeypatch.setattr(Calibration, "probability", lambda self, logits: np.full(np.shape(logits), 0.5))
    assert main(["cycle", *args]) in (0, 4)
    metrics = read_json(round_dir(workdir, 1) / "metrics.json")
    assert metrics["pco/pairs"] == 0 and metrics["pco/skipped"] == 1 and metrics["keys/aligned"] == 0
    carried, base = novelty_adapter(workdir, 1), novelty_adapter(workdir, 0)
    names = sorted(p.name for p in base.iterdir())
    assert names and sorted(p.name for p in carried.iterdir()) == names
    assert all((carried / n).read_bytes() == (base / n).read_bytes() for n in names if (base / n).is_file())
    assert "no preference pairs" in read_json(round_dir(workdir, 1) / "pco" / "metrics.json")["skipped"]
    capsys.readouterr()
