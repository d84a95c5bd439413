"""docs/evaluation.md states figures of committed results: its tables are checked against the json they quote."""

from __future__ import annotations

import json
import re

from coea.evaluate.report import LABELS
from tests.conftest import REPO

NUM = r"[+−-]?\d+\.\d+"


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def _value(cell: str) -> float:
    return float(cell.replace("−", "-"))


def _method(label: str) -> str:
    label = label.strip().strip("*")
    by_label = {v: k for k, v in LABELS.items()}
    if label in by_label:
        return by_label[label]
    hits = [m for lab, m in by_label.items() if label.startswith(lab + " ")]
    assert len(hits) == 1, f"no single method for row label {label!r}"
    return hits[0]


def test_v2_tables_match_the_committed_table2_json():
    """Every number of the v2 Table-2 and frontier-summary tables equals the committed json, rounded as printed."""
    doc = (REPO / "docs" / "evaluation.md").read_text()
    sec = _section(doc, "### Measured under evaluation v2", "**Targets, as measured:**")
    results = json.loads((REPO / "benchmarks" / "results" / "table2_ml100k.json").read_text())["results"]
    table, summary = results["table"], results["summary"]
    checked = 0
    lines = [ln for ln in sec.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    metrics = head[1:]
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "frontier summary":
            break
        for metric, cell in zip(metrics, cells[1:]):
            m = re.fullmatch(rf"({NUM})(?: \((.+)\))?", cell)
            if not m:
                continue
            method = _method(m.group(2)) if m.group(2) else _method(cells[0])
            assert round(table[method][metric]["mean"], 4) == _value(m.group(1)), (method, metric)
            checked += 1
    frontier = lines[lines.index(next(ln for ln in lines if ln.startswith("| frontier summary"))) + 1:]
    for line in frontier:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "/" in cells[0]:  # a row of ranges over several methods
            continue
        method = _method(cells[0])
        v, iv = summary["methods"][method], summary["intervals"].get(method, {})
        for name, value_cell, iv_cell in (("cn_at_matched_ncp", cells[1], cells[2]), ("area", cells[3], cells[4])):
            assert round(v[name], 4) == _value(value_cell), (method, name)
            checked += 1
            got = re.fullmatch(rf"({NUM}) \[({NUM}), ({NUM})\]", iv_cell)
            if got:
                assert [round(iv[name][k], 4) for k in ("delta", "lo", "hi")] == [_value(x) for x in got.groups()]
                checked += 1
    assert checked >= 25


def test_v3_baseline_table_matches_its_json():
    """The v3 non-LLM rows: every cell (mean, and ± std where printed) and both frontier figures equal the json."""
    doc = (REPO / "docs" / "evaluation.md").read_text()
    sec = _section(doc, "### Measured under v3: the non-LLM exploration rows", "- *Chosen on validation*")
    results = json.loads((REPO / "benchmarks" / "results" / "table2_v3_baselines_ml100k.json").read_text())["results"]
    lines = [ln for ln in sec.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    head = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    assert len(lines) == 9
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        method = _method(cells[0])
        for col, cell in zip(head, cells[1:]):
            if col.startswith("C-N@5 at matched"):
                assert round(results["summary"]["methods"][method]["cn_at_matched_ncp"], 4) == _value(cell)
            elif col == "frontier area":
                assert round(results["summary"]["methods"][method]["area"], 4) == _value(cell)
            else:
                v = results["table"][method][col]
                mean, _, std = cell.partition(" ± ")
                assert round(v["mean"], 4) == _value(mean), (method, col)
                assert round(v["std"], 4) == (_value(std) if std else 0.0), (method, col)


def test_v3_gru4rec_rows_match_their_json():
    """The converged GRU4Rec row and its Most popular reference equal table2_v3_gru4rec_ml100k.json, and the quoted
    training-curve figures equal its fits."""
    doc = (REPO / "docs" / "evaluation.md").read_text()
    sec = _section(doc, "### Measured under v3: GRU4Rec trained to convergence", "### Measured under v3: CoEA after")
    report = json.loads((REPO / "benchmarks" / "results" / "table2_v3_gru4rec_ml100k.json").read_text())
    table, fit = report["results"]["table"], report["fits"]["gru4rec/seed0"]
    lines = [ln for ln in sec.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    head = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "v2" in cells[0]:
            continue
        method = "gru4rec" if cells[0].startswith("GRU4Rec") else _method(cells[0])
        for col, cell in zip(head, cells[1:]):
            assert round(table[method][col]["mean"], 4) == _value(cell), (method, col)
    assert f"**{max(fit['valid_hit@10']):.3f} at epoch {fit['best_epoch'] + 1}**" in sec
    assert f"stopped at epoch {fit['epochs_run']}" in sec and f"{fit['popularity_valid_hit@10']:.3f}" in sec


def test_v3_coea_tables_match_their_json():
    """The one-round CoEA tables: every mean and every interval equals table2_v3_coea_seed0_ml100k.json."""
    doc = (REPO / "docs" / "evaluation.md").read_text()
    sec = _section(doc, "### Measured under v3: CoEA after one round", "- *Operating points.*")
    results = json.loads((REPO / "benchmarks" / "results" / "table2_v3_coea_seed0_ml100k.json").read_text())["results"]
    tables = [[ln for ln in block.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
              for block in sec.split("\n\n") if block.startswith("|")]
    assert len(tables) == 3
    means, ivs, equal = tables
    eq = results["summary"]["at_matched_budget"]["intervals"]
    head = [c.strip() for c in equal[0].strip("|").split("|")][1:]
    for line in equal[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for col, cell in zip(head, cells[1:]):
            got = re.fullmatch(rf"\**({NUM}) \[({NUM}), ({NUM})\]\**", cell)
            iv = eq[_method(cells[0])][col]
            assert [round(iv[x], 4) for x in ("delta", "lo", "hi")] == [_value(g) for g in got.groups()]
    head = [c.strip() for c in means[0].strip("|").split("|")][1:]
    for line in means[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for col, cell in zip(head, cells[1:]):
            assert round(results["table"][_method(cells[0])][col]["mean"], 4) == _value(cell)
    head = [c.strip() for c in ivs[0].strip("|").split("|")][1:]
    for line in ivs[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for col, cell in zip(head, cells[1:]):
            got = re.fullmatch(rf"\**({NUM}) \[({NUM}), ({NUM})\]\**", cell)
            iv = results["intervals"][_method(cells[0])][col]
            assert [round(iv[x], 4) for x in ("delta", "lo", "hi")] == [_value(g) for g in got.groups()]


def test_item_data_figures_match_the_benchmark_json():
    doc = (REPO / "docs" / "evaluation.md").read_text()
    got = json.loads((REPO / "benchmarks" / "results" / "item_data.json").read_text())
    s = got["summary"]
    assert got["git"]["dirty"] is False and s["met"] and s["items_in_catalogue"] == 30_000
    assert f"in {s['item_data_s']:.2f} s" in doc and f"{s['users']:,} users" in doc
    assert f"{round(s['events'] / 1000)}k" in doc and f"{round(s['old_per_item_rebuild_ms'])} ms per item" in doc
    assert f"about {round(s['old_item_data_estimate_s'] / 60)} minutes" in doc


def test_v3_coea_three_rounds_table_matches_its_json():
    doc = (REPO / "docs" / "evaluation.md").read_text()
    sec = _section(doc, "### Measured under v3: CoEA after three rounds", "### Table 2 v3: not yet run")
    results = json.loads((REPO / "benchmarks" / "results" / "table2_v3_coea3_seed0_ml100k.json").read_text())["results"]
    for name in ("C-H-test@1", "C-N@5", "C-N-new@5", "NA@5", "NCP@5"):
        assert f"{name} {results['table']['coea'][name]['mean']:.4f}" in sec
    lines = [ln for ln in sec.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    head = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    eq = results["summary"]["at_matched_budget"]["intervals"]
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        method = _method(cells[0])
        for col, cell in zip(head, cells[1:]):
            iv = eq[method][col.split(" at ")[0]] if " at budget" in col else results["intervals"][method][col]
            got = re.fullmatch(rf"\**({NUM}) \[({NUM}), ({NUM})\]\**", cell)
            assert [round(iv[x], 4) for x in ("delta", "lo", "hi")] == [_value(g) for g in got.groups()]
