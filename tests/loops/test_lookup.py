"""`coea lookup` tells an unknown user, CSID, category or key apart from a real key whose C_align is empty."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from coea.cli import EXIT_UNKNOWN, main
from loops.serving import lookup, write_users_table
from coea.inference import Key
from loops.state import promote_link
from storage.keys import kv_key
from storage.kv import KVStore, encode_value


@pytest.fixture
def served(tmp_path):
    """A promoted round 1 with two groups: key (g1, Jazz) has aligned categories, (g2, Hiking) has none."""
    rp = tmp_path / "rounds" / "001"
    (rp / "dsie").mkdir(parents=True)
    (rp / "dsie" / "groups.jsonl").write_text(
        "".join(json.dumps({"csid": c, "portrait": "p"}) + "\n" for c in ("g1", "g2", "g3")))
    write_users_table(rp, {"alice": Key("g1", ("Jazz",)), "bob": Key("g2", ("Hiking",))},
                      ["Jazz", "Hiking", "Chess", "Baking"])
    store = KVStore(tmp_path)
    entries = sorted([(kv_key("g1", ["Jazz"]), encode_value(1, ["Chess", "Baking"], [0.9, 0.7])),
                      (kv_key("g2", ["Hiking"]), encode_value(1, [], []))])
    store.stage(1, iter(entries))
    store.promote(1)
    promote_link(tmp_path, 1)
    return tmp_path


@pytest.mark.parametrize("query, status", [
    ({"user": "alice"}, "found"),
    ({"user": "bob"}, "empty"),
    ({"user": "nobody-ever"}, "unknown_user"),
    ({"csid": "g1", "recent": ["Jazz"]}, "found"),
    ({"csid": "g2", "recent": ["Hiking"]}, "empty"),
    ({"csid": "no-such-group", "recent": ["Jazz"]}, "unknown_csid"),
    ({"csid": "g1", "recent": ["Jazz", "Underwater Basket Weaving"]}, "unknown_category"),
    ({"csid": "g3", "recent": ["Chess"]}, "unknown_key"),  # real group, real category, no such key
])
def test_lookup_status(served, query, status):
    answer = lookup(served, **query)
    assert answer["status"] == status and answer["round"] == 1
    if status == "found":
        assert [c["category"] for c in answer["categories"]] == ["Chess", "Baking"]
    else:
        assert answer["categories"] == []
    if status == "unknown_category":
        assert answer["unknown"] == ["Underwater Basket Weaving"]
    if status == "unknown_user":
        assert answer["fallback"] and answer["csid"] == "default" and answer["user"] == "nobody-ever"


def test_cli_exit_codes(served, capsys):
    assert main(["lookup", "--workdir", str(served), "--user", "bob"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "empty"
    assert main(["lookup", "--workdir", str(served), "--user", "nobody-ever"]) == EXIT_UNKNOWN
    assert json.loads(capsys.readouterr().out)["status"] == "unknown_user"
    assert main(["lookup", "--workdir", str(served), "--csid", "g1", "--recent", "Jazz,Nope"]) == EXIT_UNKNOWN
    assert json.loads(capsys.readouterr().out)["unknown"] == ["Nope"]


def test_user_together_with_csid_is_an_error(served, capsys):
    code = main(["lookup", "--workdir", str(served), "--user", "alice", "--csid", "g2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--user" in err and "--csid" in err


def test_users_table_and_catalogue_are_written(served):
    users = pd.read_parquet(served / "rounds" / "001" / "users.parquet")
    assert list(users["user_id"]) == ["alice", "bob"]
    assert json.loads((served / "rounds" / "001" / "categories.json").read_text()) == ["Baking", "Chess", "Hiking",
                                                                                        "Jazz"]


def test_a_user_lookup_leaves_out_the_users_clicked_categories_under_exclude_history(served):
    """novelty.exclude: history writes each user's clicked categories; the key's list loses them for that user."""
    rp = served / "rounds" / "001"
    write_users_table(rp, {"alice": Key("g1", ("Jazz",)), "carol": Key("g1", ("Jazz",))},
                      ["Jazz", "Hiking", "Chess", "Baking"], history={"alice": {"Jazz", "Chess"}})
    assert [c["category"] for c in lookup(served, user="alice")["categories"]] == ["Baking"]
    assert [c["category"] for c in lookup(served, user="carol")["categories"]] == ["Chess", "Baking"]
    assert [c["category"] for c in lookup(served, csid="g1", recent=["Jazz"])["categories"]] == ["Chess", "Baking"]
