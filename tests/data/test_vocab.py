"""Append-only vocabularies: a new item in the middle of the id order shifts nothing; removals keep ids."""

from __future__ import annotations

import pandas as pd

from coea.data.vocab import Vocabulary


def _items(rows):
    return pd.DataFrame(rows, columns=["item_id", "category", "title"])


def test_round0_numbers_items_in_id_order_then_appends_without_shifting(tmp_path):
    v = Vocabulary.empty()
    v.extend(_items([("b", "Jazz", ""), ("d", "Hiking", ""), ("f", "Jazz", "")]), None, 0)
    assert v.item_ids == ["b", "d", "f"] and v.categories == ["Hiking", "Jazz"]
    before = v.item_index(["b", "d", "f"]).tolist()
    # "c" sorts between b and d (it would shift d and f in a sorted table); "a" sorts first; "Zen" is new
    upd = v.extend(_items([("a", "Zen", ""), ("b", "Jazz", ""), ("c", "Jazz", ""), ("d", "Hiking", ""),
                           ("f", "Jazz", "")]), None, 3)
    assert v.item_index(["b", "d", "f"]).tolist() == before == [1, 2, 3]
    assert v.item_index(["a", "c", "nope"]).tolist() == [4, 5, 0]
    assert upd.new_items == ["a", "c"] and upd.new_categories == ["Zen"] and v.categories == ["Hiking", "Jazz", "Zen"]
    assert v.item_rounds == [0, 0, 0, 3, 3]
    v.save(tmp_path)
    back = Vocabulary.load(tmp_path)
    assert back.item_ids == v.item_ids and back.item_index(["c"]).tolist() == [5] and back.categories == v.categories


def test_removed_items_and_categories_stay_known_but_inactive():
    v = Vocabulary.empty()
    v.extend(_items([("a", "Jazz", ""), ("b", "Opera", ""), ("c", "Jazz", "")]), None, 0)
    upd = v.extend(_items([("a", "Jazz", ""), ("c", "Jazz", "")]), None, 1)
    assert upd.removed_items == 1 and upd.removed_categories == ["Opera"]
    assert v.item_index(["b"]).tolist() == [2] and v.active == [True, False, True]
    assert v.active_categories() == ["Jazz"] and v.categories == ["Jazz", "Opera"]  # every name ever seen
    v.extend(_items([("a", "Jazz", ""), ("b", "Opera", ""), ("c", "Jazz", "")]), None, 2)  # it comes back
    assert v.active == [True, True, True] and v.item_index(["b"]).tolist() == [2]


def test_an_item_keeps_its_first_category():
    v = Vocabulary.empty()
    v.extend(_items([("a", "Jazz", "t1")]), None, 0)
    upd = v.extend(_items([("a", "Blues", "t2")]), None, 1)
    assert v.item_categories == ["Jazz"] and v.item_titles == ["t2"] and v.categories == ["Jazz"]
    assert upd.recategorised.values.tolist() == [["a", "Jazz", "Blues"]]


def test_feature_codes_are_append_only():
    v = Vocabulary.empty()
    v.extend(_items([("a", "Jazz", "")]), pd.DataFrame({"user_id": ["u1", "u2"], "city": ["paris", "unk"]}), 0)
    codes, card, names = v.feature_codes(pd.DataFrame({"user_id": ["u1", "u2"], "city": ["paris", "unk"]}),
                                         ["u1", "u2", "u3"])
    assert codes.tolist() == [[1], [0], [0]] and card == [2] and names == ["city"]
    users = pd.DataFrame({"user_id": ["u1", "u4", "u5"], "city": ["paris", "berlin", "amsterdam"],
                          "plan": ["pro", "free", "unk"]})
    upd = v.extend(_items([("a", "Jazz", "")]), users, 1)
    assert upd.new_feature_values["city"] == ["amsterdam", "berlin"] and upd.new_features == ["plan"]
    codes, card, names = v.feature_codes(users, ["u1", "u4", "u5"])
    # paris keeps code 1 although "amsterdam" and "berlin" sort before it
    assert codes.tolist() == [[1, 2], [3, 1], [2, 0]] and card == [4, 3] and names == ["city", "plan"]
    # a column that leaves the users table stays, its codes unknown
    codes, card, _ = v.feature_codes(pd.DataFrame({"user_id": ["u1"], "plan": ["pro"]}), ["u1"])
    assert codes.tolist() == [[0, 2]] and card == [4, 3]
