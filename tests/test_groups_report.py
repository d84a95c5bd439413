"""`coea groups`: the table, the JSON, the map, the HTML page, and the page in headless chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coea.cli import main
from coea.groups_report import as_json, group_colour, load_groups, render_html, render_table, user_map, write_html



@pytest.fixture(scope="module")
def workdir(tiny_cfg, tmp_path_factory):
    """Round 0's DSIE on the tiny world, and a promoted round 1 that reuses it (no DSIE refresh)."""
    from loops.cycle import run_dsie_stage
    from loops.state import record_round

    w = tmp_path_factory.mktemp("groups")
    run_dsie_stage(tiny_cfg, w)
    (w / "rounds" / "001").mkdir()
    record_round(w, 1, "promoted")
    return w


@pytest.fixture(scope="module")
def page_tool(load_benchmark):
    return load_benchmark("groups_page")


def _groups_file(w: Path) -> list[dict]:
    return [json.loads(line) for line in (w / "rounds" / "000" / "dsie" / "groups.jsonl").read_text().splitlines()]


def test_view_is_the_promoted_rounds_dsie(workdir):
    view = load_groups(workdir)
    assert (view.round, view.promoted, view.dsie_round) == (1, True, 0)
    assert {g.csid for g in view.groups} == {g["csid"] for g in _groups_file(workdir)}
    assert view.groups[-1].csid == "default"
    sizes = [g.size for g in view.groups[:-1]]
    assert sizes == sorted(sizes, reverse=True)
    users = pd.read_parquet(workdir / "rounds" / "000" / "dsie" / "users.parquet")
    assert view.n_users == len(users)
    assert load_groups(workdir, round=0).promoted is False


def test_table_has_a_row_per_group_with_size_share_categories_portrait_and_representatives(workdir):
    view = load_groups(workdir)
    text = render_table(view, width=200)
    first, header = text.splitlines()[:2]
    assert "round 1 (promoted)" in first and "DSIE of round 0" in first
    assert header.split() == ["CSID", "users", "share", "top", "categories", "portrait", "representatives"]
    rows = {line.split()[0]: line for line in text.splitlines()[3:] if line and not line.startswith(" " * 5)}
    assert set(rows) == {g.csid for g in view.groups}
    for g in view.groups:
        assert f" {g.size} " in rows[g.csid] and f"{g.size / view.n_users:.1%}" in rows[g.csid]
        if g.representatives:
            assert g.representatives[0] in rows[g.csid]
        assert (g.top_categories[0] if g.top_categories else "-") in rows[g.csid]
    assert all(len(line) <= 200 and line == line.rstrip() for line in text.splitlines()[1:])
    assert as_json(view)["groups"] == sorted(_groups_file(workdir), key=lambda g: (g["csid"] == "default",
                                                                                   -g["size"], g["csid"]))


def test_map_draws_warm_users_in_the_quantizer_space(workdir):
    view = load_groups(workdir)
    users = pd.read_parquet(workdir / "rounds" / "000" / "dsie" / "users.parquet")
    warm = users[users["csid"] != "default"]
    m = user_map(view, method="pca")
    assert m.xy.shape == (len(warm), 2) and np.isfinite(m.xy).all()
    assert m.user_ids == warm["user_id"].tolist() and m.csids == warm["csid"].tolist()
    assert "PCA" in m.note
    again = user_map(view, method="pca")
    np.testing.assert_array_equal(again.xy, m.xy)
    sample = user_map(view, method="tsne", max_points=20, seed=3)
    assert sample.xy.shape == (20, 2) and set(sample.user_ids) <= set(m.user_ids) and "20 of" in sample.note
    with pytest.raises(ValueError, match="pca"):
        user_map(view, method="umap")


def test_html_page_has_a_card_per_group_a_dot_per_user_and_escapes_text(workdir):
    view = load_groups(workdir)
    view.groups[0].portrait = '<script>alert("x")</script> & more'  # text from an LLM is never markup
    m = user_map(view)
    page = render_html(view, m)
    assert page.count('<article class="card') == len(view.groups)
    assert page.count("<circle ") == len(m.xy)
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained: nothing fetched from anywhere
    for g in view.groups:
        assert f'id="group-{g.csid}"' in page
        assert view.colour(g.csid) in page
    assert group_colour(0) != group_colour(1) and len({group_colour(r) for r in range(60)}) == 60


def test_cli_prints_the_table_writes_the_page_and_refuses_bad_input(workdir, tmp_path, capsys):
    out = tmp_path / "site" / "groups.html"
    assert main(["groups", "--workdir", str(workdir), "--html", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round 1 (promoted)" in printed and out.exists() and "<svg" in out.read_text()
    assert main(["groups", "--workdir", str(workdir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["round"] == 1
    cases = [(["--workdir", str(tmp_path / "missing")], "does not exist"),
             (["--workdir", str(workdir), "--round", "9"], "round 9 does not exist"),
             (["--workdir", str(workdir), "--html", str(tmp_path)], "is a directory")]
    for args, message in cases:
        assert main(["groups", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "fresh"
    empty.mkdir()
    assert main(["groups", "--workdir", str(empty)]) == 2
    assert "no promoted round" in capsys.readouterr().err


def test_page_renders_in_headless_chromium(workdir, tmp_path, page_tool):
    if page_tool.chromium_binary() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    view = load_groups(workdir)
    page = write_html(view, tmp_path / "groups.html")
    png = page_tool.screenshot(page, tmp_path / "groups.png", width=1400, height=1000)
    from PIL import Image

    assert Image.open(png).size == (1400, 1000)
    colours = [view.colour(g.csid) for g in view.groups if g.csid != "default"]
    found = page_tool.colours_found(png, colours)
    assert all(n > 20 for n in found.values()), found  # every group's swatch and dots were painted
    assert page_tool.colours_found(png, ["#123456"])["#123456"] == 0  # a colour the page never uses
