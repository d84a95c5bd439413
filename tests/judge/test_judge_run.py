"""``coea judge`` end to end on a tiny evaluation output written by the test: the embedded (untrained) judge and
the stub endpoint, the files, the untrained label, resuming from the cache, calibration and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coea.cli import main
from coea.judge.inputs import evaluation_lists, label_cases, recent_history, sample_users

HERE = Path(__file__).parent


@pytest.fixture
def evaluation(tmp_path) -> Path:
    """An evaluation output directory with two methods' lists for three users (and one malformed line)."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"seeds": [0], "ks": [1, 5]}))
    truth = [{"user": u, "pref": [], "hist": h, "recent": r, "clicked": []}
             for u, h, r in (("u1", ["Blues", "Jazz", "Soul"], ["Jazz"]), ("u2", ["Hiking"], []),
                             ("u3", ["Baking", "Chess"], ["Chess"]))]
    (out / "ground_truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))
    recs = [{"user": u, "method": m, "seed": 0, "ranked": ranked}
            for m, lists in (("coea", {"u1": ["Funk", "Astronomy"], "u2": ["Sailing"], "u3": ["Funk"]}),
                             ("popular", {"u1": ["Funk", "Jazz"], "u2": ["Funk"], "u3": ["Baking"]}))
            for u, ranked in lists.items()]
    (out / "recommendations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "{broken\n")
    return out


def test_inputs(evaluation):
    data = evaluation_lists(evaluation, k=1, max_users=None, seed=0, history_len=2)
    assert data.lists["coea"] == {"u1": ["Funk"], "u2": ["Sailing"], "u3": ["Funk"]}
    assert data.history["u1"] == ["Soul", "Jazz"]  # recent last, at most 2
    assert len(data.rejected) == 1 and data.rejected[0]["line"] == 7
    assert sample_users(["c", "a", "b", "d"], 2, 0) == sample_users(["d", "b", "a", "c"], 2, 0)
    assert recent_history(["A", "B", "A", "C", "C"], 2) == ["A", "C"]
    labels = label_cases(HERE / "labels.jsonl", max_users=None, seed=0, history_len=20)
    assert labels.labels == {("a", "Funk"): 2, ("a", "Astronomy"): 5, ("b", "Knitting"): 1, ("b", "Chemistry"): 4,
                             ("c", "Sculpture"): 3}
    assert labels.history["a"] == ["Jazz", "Blues", "Soul"] and len(labels.rejected) == 2  # label 9, not JSON


def _run(argv, capsys) -> tuple[int, dict | None]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else None)


def test_embedded_judge_on_an_evaluation_is_labelled_untrained_and_resumes(evaluation, tmp_path, capsys):
    out = tmp_path / "judged"
    argv = ["judge", "--evaluation", str(evaluation), "--out", str(out), "--k", "2", "--max-reasoning-tokens", "2",
            "--shots", str(HERE / "shots.jsonl"), "--tracking", "local", "--bootstrap", "50"]
    code, est = _run([*argv, "--estimate-only"], capsys)
    assert code == 0 and not (out / "judge-model").exists() and not (out / "cache.jsonl").exists()
    code, summary = _run(argv, capsys)
    assert code == 0 and summary["untrained_judge"] is True
    assert summary["cases"] == 7  # u1 Funk, Astronomy, Jazz; u2 Sailing, Funk; u3 Funk, Baking: each judged once
    rows = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 7  # 4 templates x 7 unique (user, item) pairs
    assert all(r["parsed"] and 1 <= r["score"] <= 5 and r["untrained_judge"] for r in rows)
    funk = next(r for r in rows if r["user"] == "u1" and r["item"] == "Funk" and r["template"] == "ltm")
    assert funk["ranks"] == {"coea": 1, "popular": 1} and funk["reasoning"].count("score:") == 3
    assert "UNTRAINED JUDGE" in (out / "table.md").read_text()
    prompts = (out / "prompts.md").read_text()
    assert prompts.count("## ") == 6 and "Example 10" in prompts  # base, ls, cot and LtM's three turns
    table = json.loads((out / "table.json").read_text())["table"]
    assert set(table) == {"base", "ls", "cot", "ltm"} and set(table["cot"]) == {"coea", "popular"}
    paired = json.loads((out / "table.json").read_text())["paired"]
    assert set(paired["base"]) == {"popular"} and paired["base"]["popular"]["users"] == 3  # coea is the reference
    assert "coea minus each method" in (out / "table.md").read_text()
    assert (out / "rejected.jsonl").exists() and (out / "tracking" / "metrics.jsonl").exists()
    assert summary["calls_sent"]["ltm"] == 21
    base_tokens = sum(r["prompt_tokens"] for r in rows if r["template"] == "base")
    assert est["estimate"][0]["prompt_tokens"] == base_tokens  # exact on a local judge (its own tokenizer)
    code, again = _run(argv, capsys)  # a rerun reads every reply from the cache
    assert code == 0 and again["calls_sent"] == {"base": 0, "ls": 0, "cot": 0, "ltm": 0}
    assert json.loads((out / "table.json").read_text())["table"] == table


def test_endpoint_judge_and_estimate(evaluation, tmp_path, capsys, stub_server):
    out = tmp_path / "judged"
    with stub_server() as server:
        base = ["judge", "--evaluation", str(evaluation), "--out", str(out), "--endpoint", server.url, "--model",
                "stub", "--k", "2", "--tracking", "none", "--bootstrap", "50", "--price-in", "0.15",
                "--price-out", "0.6"]
        code, est = _run([*base, "--estimate-only"], capsys)
        assert code == 0 and not server.requests and not est["untrained_judge"]
        assert [e["calls"] for e in est["estimate"]] == [7, 7, 7, 21] and est["estimate"][0]["usd_max"] > 0
        code, summary = _run([*base, "--templates", "base,ltm", "--max-users", "2"], capsys)
        assert code == 0 and len(server.requests) == summary["calls_sent"]["base"] + summary["calls_sent"]["ltm"]
    table = json.loads((out / "table.json").read_text())["table"]
    # the stub scores Funk 2 and everything else 5 (base); LtM always 4
    assert table["ltm"]["coea"]["precision@2"]["mean"] == pytest.approx(table["ltm"]["coea"]["items"] / 2 / 2)
    assert "UNTRAINED" not in (out / "table.md").read_text()


def test_a_run_killed_by_a_failing_server_resumes_without_repeating_calls(evaluation, tmp_path, capsys,
                                                                        stub_server):
    out = tmp_path / "judged"
    argv = ["judge", "--evaluation", str(evaluation), "--out", str(out), "--model", "stub", "--templates", "base",
            "--tracking", "none", "--max-retries", "0", "--concurrency", "1", "--k", "2"]
    with stub_server(fail_after=4) as dying:
        code = main([*argv, "--endpoint", dying.url])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("coea: judge failed: EndpointError") and "gave up after 1 attempts" in last
    assert len((out / "cache.jsonl").read_text().splitlines()) == 4  # what was answered is kept
    with stub_server() as healthy:
        code, summary = _run([*argv, "--endpoint", healthy.url], capsys)
    assert code == 0 and summary["calls_sent"]["base"] == 7 - 4 == len(healthy.requests)


def test_calibrate_against_labels(tmp_path, capsys, stub_server):
    out = tmp_path / "cal"
    with stub_server() as server:
        code, summary = _run(["judge", "calibrate", "--labels", str(HERE / "labels.jsonl"), "--out", str(out),
                              "--endpoint", server.url, "--model", "stub", "--templates", "base,cot",
                              "--tracking", "none"], capsys)
    assert code == 0
    cal = json.loads((out / "calibration.json").read_text())
    # base: Funk -> 2, everything else 5; labels (2, 5, 1, 4, 3) -> |errors| (0, 0, 4, 1, 2): MAE 7/5
    assert cal["templates"]["base"]["mae"] == pytest.approx(7 / 5)
    assert cal["templates"]["base"]["accuracy_3class"] == pytest.approx(3 / 5)  # Funk, Astronomy, Chemistry
    assert cal["agreement"]["base~cot"]["n"] == 5
    assert summary["calibration"]["cot"]["unparseable"] == 0
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 2
    assert "MAE" in (out / "calibration.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--k", "0"], "--k must be at least 1"),
    (["--templates", "fancy"], "unknown"),
    (["--endpoint", "http://127.0.0.1:9"], "--endpoint needs --model"),
    (["--shots", "/nonexistent.jsonl"], "No such file"),
    (["--reference", "knn"], "--reference knn: not a method"),
    (["--methods", "coea,knn"], "knn not in"),
])
def test_bad_arguments_exit_2(evaluation, tmp_path, capsys, argv, message):
    code = main(["judge", "--evaluation", str(evaluation), "--out", str(tmp_path / "o"), *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["judge", "--out", str(tmp_path / "o")]) == 2
    assert "give --workdir" in capsys.readouterr().err
    assert main(["judge", "--evaluation", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a `coea evaluate` output directory" in capsys.readouterr().err
    assert main(["judge", "calibrate", "--out", str(tmp_path / "o")]) == 2


def test_workdir_input_reads_what_serving_answers(tmp_path, monkeypatch):
    """The promoted round's users, their clicks before the round's cut-off and what lookup serves, top K."""
    import types

    import pandas as pd

    from coea.judge import inputs

    (tmp_path / "current").mkdir()
    (tmp_path / "state.json").write_text(json.dumps({"promoted_round": 2}))
    pd.DataFrame({"user_id": ["u1", "u2", "u3"], "csid": ["a", "a", "b"], "recent": [[], [], []]}).to_parquet(
        tmp_path / "current" / "users.parquet")
    served = {"u1": ["Jazz", "Funk", "Soul"], "u2": [], "u3": ["Chess"]}
    seen_end = []
    monkeypatch.setattr(inputs, "workdir_config", lambda w, k: types.SimpleNamespace(round=k))
    monkeypatch.setattr(inputs, "load_data", lambda cfg: "events")
    monkeypatch.setattr(inputs, "round_cutoff", lambda w, k: 1000 + k)
    monkeypatch.setattr(inputs, "click_categories_by_user", lambda inter, end: seen_end.append(end) or {
        "u1": [(1, "Blues"), (2, "Jazz"), (3, "Blues")], "u3": [(5, "Go")]})
    monkeypatch.setattr(inputs, "lookup", lambda w, user: {"categories": [{"category": c, "score": 0.9}
                                                                            for c in served[user]]})
    data = inputs.workdir_lists(tmp_path, k=2, max_users=None, seed=0, history_len=5)
    assert seen_end == [1002]  # the round's cut-off: the judge sees what the round knew
    assert data.lists == {"coea-round-2": {"u1": ["Jazz", "Funk"], "u2": [], "u3": ["Chess"]}}
    assert data.history == {"u1": ["Jazz", "Blues"], "u2": [], "u3": ["Go"]}
    assert data.source["round"] == 2 and "1 of 3 users are served no category" in data.notes[0]
    assert len(inputs.workdir_lists(tmp_path, k=2, max_users=2, seed=0, history_len=5).history) == 2
    (tmp_path / "state.json").write_text(json.dumps({"promoted_round": None}))
    with pytest.raises(FileNotFoundError, match="no promoted round"):
        inputs.workdir_lists(tmp_path, k=2, max_users=None, seed=0, history_len=5)
