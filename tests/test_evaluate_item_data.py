"""``coea evaluate``'s item data in linear time: the item -> category map is built once per items table, not once
per item (the old property rebuilt a dict of every item on every read: O(items^2) in item_data)."""

from __future__ import annotations

import pandas as pd

import coea.data.schema as schema
from coea.data.schema import Interactions
from coea.evaluate.run import item_data
from coea.evaluate.split import make_split


def _inter(items: pd.DataFrame) -> Interactions:
    return Interactions(events=pd.DataFrame(columns=["user_id", "item_id", "timestamp", "event", "rating"]),
                        items=items, users=pd.DataFrame({"user_id": []}), categories=sorted(set(items["category"])))


def test_item_category_is_built_once_and_follows_a_new_items_table():
    inter = _inter(pd.DataFrame({"item_id": ["1", "2"], "category": ["A", "B"], "title": ["", ""]}))
    first = inter.item_category
    assert first == {"1": "A", "2": "B"}
    assert inter.item_category is first  # cached: the old property returned a fresh dict on every read
    inter.items = pd.DataFrame({"item_id": ["1", "3"], "category": ["A", "C"], "title": ["", ""]})
    assert inter.item_category == {"1": "A", "3": "C"}  # a new table is a new map


def test_item_data_reads_the_item_map_a_bounded_number_of_times(monkeypatch):
    """item_data over a 400-item catalogue builds the dict of every item (the zip over the items table in
    coea/data/schema.py) a few times at most, not once per item as before (400+ builds)."""
    from coea.config import load_config
    from coea.data.loaders import load_interactions
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        "synthetic.n_users=60", "synthetic.n_categories=8", "synthetic.items_per_category=50",
        "synthetic.n_days=10", "eval.test_clicks=1", "eval.valid_clicks=1"])
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    split = make_split(cfg, inter)
    builds = []
    real_zip = zip

    def counting_zip(*args):
        if len(args) == 2 and all(isinstance(a, pd.Series) for a in args) and args[0].name == "item_id":
            builds.append(1)
        return real_zip(*args)

    monkeypatch.setattr(schema, "zip", counting_zip, raising=False)
    data, _ = item_data(cfg, inter, split)
    assert data.n_items == 400 and len(data.item_category) == 401
    assert 1 <= len(builds) <= 3, f"{len(builds)} builds of the item -> category dict for 400 items"
