"""`coea groups --html` rendered in a real headless browser (Debian's chromium), with a screenshot.

    python benchmarks/groups_page.py --workdir W [--map tsne] [--png docs/groups-demo.png] \
        [--out benchmarks/results/groups_page.json]

Writes the promoted round's groups page (coea.groups_report.write_html), takes a 1400x1000 screenshot of it with
``chromium --headless``, and checks that the page really rendered: the screenshot must hold pixels of the exact
colour of each of the largest groups (their swatches and map dots). Prints one JSON line (page size, points on
the map, seconds to build the page and to screenshot it, colours found) and writes it to ``--out``. Timings on a
shared machine move with its load (the line records the load average).

tests/test_groups_report.py uses :func:`screenshot` and :func:`colours_found` on a tiny workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Flags that work on these machines: no GPU, no sandbox (root), no network chatter, a fresh profile each run,
# sRGB output so CSS colours land in the PNG unchanged.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--force-color-profile=srgb", "--hide-scrollbars"]


def chromium_binary() -> str | None:
    """Path of a chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, png: Path, *, width: int = 1400, height: int = 1000, timeout: float = 120) -> Path:
    """Screenshot ``page`` (a local HTML file) to ``png`` with headless chromium; raises when it fails."""
    browser = chromium_binary()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install -y chromium)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    with tempfile.TemporaryDirectory(prefix="coea-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", Path(page).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium exited {proc.returncode} without {png}: {proc.stderr[-1000:]}")
    return png


def colours_found(png: Path, colours: list[str]) -> dict[str, int]:
    """Pixels of each exact ``#rrggbb`` colour in ``png``."""
    import numpy as np
    from PIL import Image  # pillow comes with matplotlib, a coea dependency

    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(np.int64)  # (H*W, 3)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    have = dict(zip(values.tolist(), counts.tolist()))
    return {c: int(have.get(int(c[1:], 16), 0)) for c in colours}


def main(argv: list[str] | None = None) -> dict:
    from coea.groups_report import load_groups, render_html, user_map

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--map", choices=["pca", "tsne"], default="pca")
    ap.add_argument("--html", default="", help="where the page goes (default: a temporary file)")
    ap.add_argument("--png", default="", help="where the screenshot goes (default: next to the page)")
    ap.add_argument("--out", default="", help="JSON results file")
    ap.add_argument("--check-groups", type=int, default=10, help="largest groups whose colour must be on screen")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="coea-groups-page-"))
    page = Path(args.html) if args.html else tmp / "groups.html"
    png = Path(args.png) if args.png else page.with_suffix(".png")
    t = time.perf_counter()
    view = load_groups(args.workdir)
    umap = user_map(view, method=args.map)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_html(view, umap), encoding="utf-8")
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    screenshot(page, png)
    shot_s = time.perf_counter() - t
    warm = [g.csid for g in view.groups if g.csid != "default"][: args.check_groups]
    found = colours_found(png, [view.colour(c) for c in warm])
    from PIL import Image

    line = {
        "benchmark": "groups_page", "workdir": str(args.workdir), "round": view.round, "map": args.map,
        "groups": len(view.groups), "points": len(umap.xy), "html_bytes": page.stat().st_size,
        "build_s": round(build_s, 2), "screenshot_s": round(shot_s, 2), "screenshot": str(png),
        "screenshot_size": list(Image.open(png).size),
        "colours_checked": len(found), "colours_on_screen": sum(1 for n in found.values() if n > 0),
        "load_avg_1m": round(os.getloadavg()[0], 2), "browser": chromium_binary(),
    }
    print(json.dumps(line), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(line, indent=2) + "\n")
    if line["colours_on_screen"] < line["colours_checked"]:
        missing = [c for c, n in zip(warm, found.values()) if n == 0]
        raise SystemExit(f"groups page: no pixel of the colour of groups {missing} in {png}")
    return line


if __name__ == "__main__":
    main()
