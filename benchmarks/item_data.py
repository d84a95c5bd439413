"""``coea evaluate``'s item data on a large synthetic catalogue: seconds spent building it (issue 25's < 5 s at 30k).

    python benchmarks/item_data.py [--categories 100] [--items-per-category 300] [--users 1500] [--days 12] \
        [--out benchmarks/results/item_data.json]

Builds a synthetic world of ``categories x items-per-category`` items (30,000 by default), splits it as
``coea evaluate`` does (coea.evaluate.split.make_split, per-user split), and times
:func:`coea.evaluate.run.item_data` -- the item models' data: two sequence builds and the item -> category index
of every item of the vocabulary. Side by side it times what the old code paid per item (one rebuild of the
item -> category dict for every item, O(items^2)) on ``--old-sample`` items and scales it to the whole catalogue.
Prints the figures and writes them, with the git commit, the load average and the thread count, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from coea.config import load_config  # noqa: E402
from coea.data.loaders import load_interactions  # noqa: E402
from coea.evaluate.run import item_data  # noqa: E402
from coea.evaluate.split import make_split  # noqa: E402
from coea.workdir import library_versions  # noqa: E402


def git_state() -> dict:
    """The commit the run used and whether the tree had uncommitted changes (a result must come from a commit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "coea", "loops",
                                                                  "benchmarks/item_data.py"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", type=int, default=100)
    ap.add_argument("--items-per-category", type=int, default=300)
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--days", type=int, default=12)
    ap.add_argument("--old-sample", type=int, default=300, help="items timed on the old per-item path")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "item_data.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"synthetic.n_categories={args.categories}", f"synthetic.items_per_category={args.items_per_category}",
        f"synthetic.n_users={args.users}", f"synthetic.n_days={args.days}", "eval.test_clicks=2",
        "eval.valid_clicks=2", "run.num_threads=1"])
    t = time.perf_counter()
    inter = load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)
    split = make_split(cfg, inter)
    world_s = time.perf_counter() - t

    t = time.perf_counter()
    data, row_of = item_data(cfg, inter, split)
    item_data_s = time.perf_counter() - t

    # the old path: `inter.item_category` rebuilt the whole dict on every read, once per item of the vocabulary
    items = inter.items
    sample = items["item_id"].astype(str).tolist()[: args.old_sample]
    t = time.perf_counter()
    for v in sample:
        dict(zip(items["item_id"], items["category"])).get(v)
    per_item = (time.perf_counter() - t) / max(len(sample), 1)
    old_estimate_s = per_item * data.n_items

    summary = {"items_in_catalogue": int(len(items)), "items_in_vocabulary": int(data.n_items),
               "users": len(row_of), "events": int(len(inter.events)), "world_and_split_s": round(world_s, 2),
               "item_data_s": round(item_data_s, 3), "target_s": 5.0, "met": item_data_s < 5.0,
               "old_per_item_rebuild_ms": round(1000 * per_item, 3),
               "old_item_data_estimate_s": round(old_estimate_s + item_data_s, 1)}
    print(json.dumps(summary, indent=1))
    out = {"args": vars(args), "summary": summary, "git": git_state(),
           "conditions": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                          "torch_threads": torch.get_num_threads(),
                          "note": "shared machine: other engineers' jobs ran at the same time"},
           "versions": library_versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
