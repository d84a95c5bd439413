"""`coea world`: an MTRec-shaped click log written day partition by day partition, in bounded memory."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from coea import cli
from coea.data.parquet import load_parquet
from coea.data.partitions import SUCCESS, scan_log
from coea.data.world import WorldSpec, item_layout, write_world

REPO = Path(__file__).resolve().parents[2]


def small(**kw) -> WorldSpec:
    base = dict(users=900, categories=60, days=4, items=200, clicks_per_user=40.0, groups=6,
                categories_per_group=4, latent_per_user=2, discover_prob=0.3, chunk_users=250, seed=3)
    return WorldSpec(**{**base, **kw})


def test_layout_is_the_live_log_and_reads_back_without_rejects(tmp_path):
    spec = small()
    res = write_world(spec, tmp_path / "w")
    listing = scan_log(tmp_path / "w")
    assert [p.day for p in listing.partitions] == [dt.date(2024, 1, 1) + dt.timedelta(days=d) for d in range(4)]
    assert all(p.complete for p in listing.partitions)
    assert all(len(p.files) == 4 for p in listing.partitions)  # one file per user chunk (900 / 250 -> 4)
    inter = load_parquet(tmp_path / "w")
    assert inter.rejects.total == 0 and not inter.rejects.kept  # per-user chronological: no out-of-order notes
    assert len(inter.events) == res.clicks == sum(res.clicks_per_day)
    assert set(inter.events["event"]) == {"click"}
    assert len(inter.items) == 200 and len(inter.categories) == 60
    assert abs(res.clicks / spec.users - 40.0) < 2.0  # Poisson(40/4) per day, 900 users
    assert (inter.events["timestamp"] // 86_400).between(19_723, 19_726).all()  # 2024-01-01 .. 01-04


def test_same_spec_same_log_and_latent_interests_wait_for_discovery(tmp_path):
    spec = small()
    write_world(spec, tmp_path / "a")
    write_world(spec, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "events").rglob("*.parquet"))
    for f in files:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / f), pd.read_parquet(tmp_path / "b" / f))
    inter = load_parquet(tmp_path / "a")
    ev = inter.events.merge(inter.items, on="item_id")
    ev["day"] = ev["timestamp"] // 86_400 - 19_723
    truth = pd.read_parquet(tmp_path / "a" / "ground_truth.parquet")
    seen = ev.groupby(["user_id", "category"])["day"].min()
    n_discovered = 0
    for uid, latent, days in zip(truth["user_id"].astype(str), truth["latent_interests"], truth["discovery_day"]):
        for cat, day in zip(latent, days):
            first = seen.get((uid, cat))
            if day < 0:
                assert first is None, (uid, cat)  # never discovered: never clicked
            else:
                n_discovered += 1
                assert first is None or first >= day, (uid, cat, first, day)
    assert n_discovered > 100


def test_item_layout_covers_every_item_once():
    first, count = item_layout(27_953, 594)
    assert count.sum() == 27_953 and count.min() == 47 and count.max() == 48
    assert (first[1:] == np.cumsum(count)[:-1]).all()


def test_each_day_is_complete_before_the_next_is_written(tmp_path):
    seen = []

    def progress(day: int, clicks: int) -> None:
        events = tmp_path / "w" / "events"
        parts = sorted(events.iterdir())
        seen.append((day, len(parts), (parts[-1] / SUCCESS).exists()))

    write_world(small(), tmp_path / "w", progress=progress)
    assert seen == [(d, d + 1, True) for d in range(4)]


_CHILD = """
import sys
from coea.data.world import WorldSpec, write_world
users, chunk, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
write_world(WorldSpec(users=users, categories=100, days=3, items=1000, clicks_per_user=90.0, groups=10,
                      chunk_users=chunk), out)
"""
# A launcher between pytest and the generator: a forked child starts with its parent's peak RSS (ru_maxrss survives
# exec), so the generator must be forked from a small process for RUSAGE_CHILDREN to be the generator's own peak.
_LAUNCH = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_kib(users: int, chunk: int, out: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _LAUNCH, _CHILD, str(users), str(chunk), str(out)],
                          capture_output=True, env=env, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_users_at_a_fixed_chunk(tmp_path):
    """8x the users (2.7M clicks, ~90 MB of event columns if held at once) at a fixed 2,000-user chunk: the peak
    grows by the per-user state only (a few bytes per user), far less than the log."""
    small_peak = _peak_kib(4_000, 2_000, tmp_path / "s")
    large_peak = _peak_kib(32_000, 2_000, tmp_path / "l")
    whole = _peak_kib(32_000, 32_000, tmp_path / "w")  # one chunk = the whole log per day in memory
    assert large_peak - small_peak < 25_000, (small_peak, large_peak)  # KiB
    assert whole - large_peak > 25_000, (large_peak, whole)  # the test can see a log held in memory


def test_cli_writes_a_world_and_refuses_bad_flags(tmp_path, capsys):
    out = tmp_path / "w"
    assert cli.main(["world", "--users", "300", "--categories", "30", "--items", "90", "--days", "2",
                     "--groups", "4", "--categories-per-group", "3", "--out", str(out), "--json"]) == 0
    assert '"users": 300' in capsys.readouterr().out
    assert (out / "events" / "date=2024-01-02" / SUCCESS).exists()
    assert cli.main(["world", "--users", "300", "--out", str(out)]) == 2  # not empty
    err = capsys.readouterr().err
    assert err.count("coea:") == 1 and "not an empty directory" in err
    assert cli.main(["world", "--users", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--users must be >= 1" in capsys.readouterr().err
