"""The CSID groups of a round, for people: a text table and a static HTML page (``coea groups``, docs/dsie.md).

One entry per output, each reading a finished workdir and nothing else::

    load_groups(workdir, round=None)    the DSIE stage in use at the promoted round (or ``round``), its groups
    render_table(view)                  CSID, size, share, top categories, portrait, representatives
    user_map(view, method="pca")        2-D map of the warm users' u_long, in the space the CSIDs compare
    render_html(view, umap)             one self-contained page: the map coloured by group (the paper's Figure 3
                                        picture) and one card per group; no script, no network

Sizes, representatives and portraits are those of the DSIE stage the round uses (the newest DSIE at or before
it, ``coea.rounds.latest_dsie_dir``); later rounds re-assign users to these groups without rewriting them.
"""

from __future__ import annotations

import colorsys
import html
import io
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from coea.groups import GroupPortrait
from coea.rounds import latest_dsie_dir, read_state
from coea.workdir import read_json
from quantizer import RQVAE
from storage.keys import DEFAULT_CSID

MAP_METHODS = ("pca", "tsne")
# tab20's first ten and their light partners, then golden-angle hues: distinct, stable colours per group rank
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
            "#dbdb8d", "#9edae5"]
DEFAULT_COLOUR = "#9e9e9e"


@dataclass
class GroupsView:
    """The groups of one round of a workdir.

    Attributes:
        round: the round asked for (the promoted one by default).
        dsie_dir: the DSIE stage that round uses; dsie_round: the round that wrote it.
        groups: groups.jsonl, largest first; ``default`` (cold start) last.
        report: that stage's report.json (group sizes, Figure-3 check, purity / NMI on the synthetic world).
    """

    workdir: Path
    round: int
    promoted: bool
    dsie_dir: Path
    dsie_round: int
    groups: list[GroupPortrait]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return sum(g.size for g in self.groups)

    def colour(self, csid: str) -> str:
        """A stable colour per group (by size rank, :func:`group_colour`); grey for ``default``."""
        return self.colours.get(csid, DEFAULT_COLOUR)

    @cached_property
    def colours(self) -> dict[str, str]:
        warm = [g.csid for g in self.groups if g.csid != DEFAULT_CSID]
        return {csid: group_colour(rank) for rank, csid in enumerate(warm)}


def group_colour(rank: int) -> str:
    """``#rrggbb`` of the group of size rank ``rank`` (0 = largest): the palette, then golden-angle hues."""
    if rank < len(_PALETTE):
        return _PALETTE[rank]
    r, g, b = colorsys.hls_to_rgb(((rank - len(_PALETTE)) * 0.618034) % 1.0, 0.45, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


@dataclass
class UserMap:
    """2-D coordinates of (a sample of) the warm users: xy (n, 2), their ids and groups, how they were made."""

    xy: np.ndarray
    user_ids: list[str]
    csids: list[str]
    method: str
    n_warm: int  # warm users in the stage (the map may show a sample of them)
    note: str


def load_groups(workdir: str | Path, round: int | None = None) -> GroupsView:
    """The groups in use at ``round`` (default: the promoted round) of ``workdir``.

    Raises:
        FileNotFoundError: no such workdir, no promoted round (and none asked for), no such round, or no DSIE
            stage at or before it (the CLI maps it to exit 2 with the message).
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"workdir {workdir} does not exist")
    state = read_state(workdir)
    promoted = state.get("promoted_round")
    if round is None:
        if promoted is None:
            raise FileNotFoundError(f"no promoted round in {workdir} yet (run `coea cycle`); --round K shows the "
                                    "groups a round used")
        round = int(promoted)
    if not (workdir / "rounds" / f"{round:03d}").is_dir():
        raise FileNotFoundError(f"round {round} does not exist in {workdir}")
    dsie_dir = latest_dsie_dir(workdir, round)
    groups = [GroupPortrait(**json.loads(line)) for line in (dsie_dir / "groups.jsonl").read_text().splitlines()
              if line.strip()]
    groups.sort(key=lambda g: (g.csid == DEFAULT_CSID, -g.size, g.csid))
    report_path = dsie_dir / "report.json"
    return GroupsView(workdir=workdir, round=round, promoted=promoted == round, dsie_dir=dsie_dir,
                      dsie_round=int(dsie_dir.parent.name), groups=groups,
                      report=read_json(report_path) if report_path.exists() else {})


# ------------------------------------------------------------------------------------------------- table


def _representatives_text(reps: list[str], shown: int = 3) -> str:
    if not reps:
        return "-"
    more = len(reps) - shown
    return ", ".join(reps[:shown]) + (f" (+{more})" if more > 0 else "")


def summary_line(view: GroupsView) -> str:
    """One line: which round, which DSIE, how many users and groups, the Figure-3 and ground-truth figures."""
    n_default = sum(g.size for g in view.groups if g.csid == DEFAULT_CSID)
    parts = [f"round {view.round}" + (" (promoted)" if view.promoted else ""),
             f"DSIE of round {view.dsie_round}",
             f"{view.n_users} users in {len(view.groups) - 1} groups + default ({n_default} cold start)"]
    fig3 = view.report.get("figure3") or {}
    if fig3.get("intra") is not None and fig3.get("inter") is not None:
        parts.append(f"cosine within {fig3['intra']:.3f} vs across {fig3['inter']:.3f} (centred)")
    truth = view.report.get("ground_truth")
    if truth:
        parts.append(f"purity {truth['purity']:.3f}, NMI {truth['nmi']:.3f} vs the latent groups")
    return "; ".join(parts)


def render_table(view: GroupsView, *, width: int | None = None) -> str:
    """The groups as a text table (rich), one row per group, ``default`` last; ``width`` columns (default 160)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_lines=False, pad_edge=False, expand=False)
    table.add_column("CSID", no_wrap=True)
    table.add_column("users", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("top categories", min_width=16)
    table.add_column("portrait", min_width=24)
    table.add_column("representatives", min_width=12)
    total = max(view.n_users, 1)
    for g in view.groups:
        table.add_row(g.csid, str(g.size), f"{g.size / total:.1%}", ", ".join(g.top_categories) or "-", g.portrait,
                      _representatives_text(g.representatives))
    buf = io.StringIO()
    console = Console(file=buf, width=width or 160, no_color=True, force_terminal=False, highlight=False,
                      emoji=False, markup=False)
    console.print(table)
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    return "\n".join([f"{view.workdir}: {summary_line(view)}", *[line for line in lines if line]]) + "\n"


def as_json(view: GroupsView) -> dict[str, Any]:
    """Machine-readable form of the table (``coea groups --json``)."""
    return {"workdir": str(view.workdir), "round": view.round, "promoted": view.promoted,
            "dsie_round": view.dsie_round, "dsie_dir": str(view.dsie_dir), "n_users": view.n_users,
            "groups": [asdict(g) for g in view.groups]}


# --------------------------------------------------------------------------------------------------- map


def user_map(view: GroupsView, *, method: Literal["pca", "tsne"] = "pca", max_points: int = 5000,
             seed: int = 0) -> UserMap:
    """2-D map of the warm users (cold-start users are not drawn: their u_long is the sparse token alone).

    Coordinates come from the space the CSID merge rule and the representatives use: the RQ-VAE's
    ``prepare(u_long)`` (centred on the warm users' mean and L2-normalised when ``quantizer.standardize``),
    reduced to 2-D by scikit-learn's PCA or t-SNE (PCA-initialised, perplexity min(30, (n - 1) / 3)). At most
    ``max_points`` users, a uniform sample drawn with ``seed``.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"map method must be one of {MAP_METHODS}; got {method!r}")
    import pandas as pd

    users = pd.read_parquet(view.dsie_dir / "users.parquet")
    u_long = np.load(view.dsie_dir / "u_long.npy")  # (N, d)
    warm = np.flatnonzero(users["csid"].to_numpy() != DEFAULT_CSID)
    space = _quantizer_space(view.dsie_dir, u_long)
    rows = warm
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_points, replace=False))
    x = space[rows].astype(np.float64)  # (n, d)
    note = f"{len(rows)} of {len(warm)} warm users" if len(rows) < len(warm) else f"all {len(warm)} warm users"
    if len(rows) < 3:
        xy = np.zeros((len(rows), 2))
    elif method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(x)
        xy = pca.transform(x)
        note += f"; PCA, {pca.explained_variance_ratio_.sum():.0%} of the variance"
    else:
        from sklearn.manifold import TSNE

        perplexity = float(max(1.0, min(30.0, (len(rows) - 1) / 3)))
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
        note += f"; t-SNE, perplexity {perplexity:g}"
    return UserMap(xy=np.asarray(xy, dtype=np.float64), user_ids=users["user_id"].astype(str).to_numpy()[rows].tolist(),
                   csids=users["csid"].astype(str).to_numpy()[rows].tolist(), method=method, n_warm=len(warm),
                   note=note)


def _quantizer_space(dsie_dir: Path, u_long: np.ndarray) -> np.ndarray:
    """``RQVAE.prepare(u_long)`` with the saved model; raw u_long when no RQ-VAE was trained."""
    rq = dsie_dir / "rqvae.pt"
    if not rq.exists():
        return u_long
    import torch

    model = RQVAE.load(rq)
    with torch.no_grad():
        return model.prepare(torch.from_numpy(u_long)).numpy()


# -------------------------------------------------------------------------------------------------- html


def _svg_map(view: GroupsView, umap: UserMap, *, width: int = 640, height: int = 520, pad: int = 24,
             max_labels: int = 16) -> str:
    e = html.escape
    if len(umap.xy) == 0:
        return (f'<svg class="map" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
                f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no warm users to draw</text></svg>')
    lo, hi = umap.xy.min(axis=0), umap.xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scale = min((width - 2 * pad) / span[0], (height - 2 * pad) / span[1])
    off = (np.array([width, height]) - scale * span) / 2
    px = (umap.xy - lo) * scale + off  # (n, 2) in pixels
    px[:, 1] = height - px[:, 1]  # y up
    parts = [f'<svg class="map" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="2-D map of users coloured by group">']
    order = np.argsort([umap.csids[i] for i in range(len(px))], kind="stable")
    for i in order:
        parts.append(f'<circle cx="{px[i, 0]:.1f}" cy="{px[i, 1]:.1f}" r="4" fill="{view.colour(umap.csids[i])}">'
                     f'<title>{e(umap.user_ids[i])}: group {e(umap.csids[i])}</title></circle>')
    # labels at group centres, largest group first, skipping any that would overlap a label already placed
    csids = np.asarray(umap.csids, dtype=object)
    placed: list[tuple[float, float]] = []
    for g in view.groups:
        members = px[csids == g.csid]
        if g.csid == DEFAULT_CSID or not len(members) or len(placed) >= max_labels:
            continue
        cx, cy = members.mean(axis=0)
        half = 3.6 * len(g.csid) + 4  # half a label's width at 12px, plus a margin
        if all(abs(cx - x) > half + 3.6 * 6 or abs(cy - y) > 16 for x, y in placed):
            placed.append((cx, cy))
            parts.append(f'<text class="label" x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle">{e(g.csid)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _card(view: GroupsView, g: GroupPortrait, total: int) -> str:
    e = html.escape
    chips = "".join(f'<span class="chip">{e(c)}</span>' for c in g.top_categories) or '<span class="none">-</span>'
    reps = ", ".join(e(r) for r in g.representatives) or "none (cold-start users have no long-term history)"
    cold = ' cold' if g.csid == DEFAULT_CSID else ''
    share = g.size / max(total, 1)
    return (f'<article class="card{cold}" id="group-{e(g.csid)}">'
            f'<header><span class="swatch" style="background:{view.colour(g.csid)}"></span>'
            f'<span class="csid">{e(g.csid)}</span>'
            f'<span class="size">{g.size} users &middot; {share:.1%}</span></header>'
            f'<div class="bar"><span style="width:{100 * share:.1f}%;background:{view.colour(g.csid)}"></span></div>'
            f'<div class="chips">{chips}</div>'
            f'<p class="portrait">{e(g.portrait)}</p>'
            f'<p class="reps"><b>Representatives</b> (nearest the centroid, Eq. 7): {reps}</p>'
            f'</article>')


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;color:#1d1d1f;
background:#fafafa}
h1{font-size:22px;margin:0 0 4px}
.sub{color:#555;margin:0 0 16px}
.top{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
figure{margin:0;width:642px}
figcaption{color:#555;font-size:12px;margin-top:6px}
.map{background:#fff;border:1px solid #ddd;border-radius:8px}
.map .label{font:600 12px system-ui,sans-serif;fill:#111;paint-order:stroke;stroke:#fff;stroke-width:3px}
.facts{flex:1;min-width:320px}
.facts table{border-collapse:collapse}
.facts td{padding:3px 12px 3px 0;vertical-align:top}
.facts td:first-child{color:#555}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;margin-top:20px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px 14px}
.card.cold{background:#f3f3f3}
.card header{display:flex;align-items:center;gap:8px}
.swatch{width:14px;height:14px;border-radius:3px;display:inline-block}
.csid{font:600 15px ui-monospace,SFMono-Regular,Menlo,monospace}
.size{margin-left:auto;color:#555}
.bar{height:4px;background:#eee;border-radius:2px;margin:8px 0}
.bar span{display:block;height:4px;border-radius:2px}
.chip{display:inline-block;background:#eef2f7;border-radius:10px;padding:1px 8px;margin:0 4px 4px 0;font-size:12px}
.portrait{margin:6px 0}
.reps{color:#555;font-size:12px;margin:4px 0 0}
"""


def render_html(view: GroupsView, umap: UserMap | None) -> str:
    """A self-contained page (inline CSS and SVG; no script, no external resource)."""
    e = html.escape
    total = view.n_users
    fig3 = view.report.get("figure3") or {}
    truth = view.report.get("ground_truth")
    facts = [("workdir", e(str(view.workdir))),
             ("round", f"{view.round}" + (" (promoted)" if view.promoted else "")),
             ("groups from", f"DSIE of round {view.dsie_round} ({e(str(view.dsie_dir))})"),
             ("users", f"{total} in {len(view.groups) - 1} groups + default")]
    sizes = view.report.get("group_sizes") or {}
    if sizes.get("count"):
        facts.append(("group sizes", f"largest {sizes['max']}, median {sizes['median']:g}, smallest {sizes['min']}"))
    if fig3.get("intra") is not None and fig3.get("inter") is not None:
        facts.append(("Figure 3 check", f"mean cosine within groups {fig3['intra']:.3f}, across {fig3['inter']:.3f}"
                                        " (centred u_long)"))
    if truth:
        facts.append(("vs latent groups", f"purity {truth['purity']:.3f}, NMI {truth['nmi']:.3f}"))
    if umap is not None:
        facts.append(("map", e(umap.note) + "; cold-start users (default) are not drawn"))
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)
    svg = (f'<figure>{_svg_map(view, umap)}<figcaption>Each dot is a user, coloured by CSID group (the cards '
           f'below); labels sit at group centres. {e(umap.method.upper() if umap.method == "pca" else "t-SNE")} of '
           f'the quantizer space (u_long centred and L2-normalised when quantizer.standardize).</figcaption>'
           f'</figure>') if umap is not None else ""
    cards = "".join(_card(view, g, total) for g in view.groups)
    title = f"coea groups: {view.workdir.name}, round {view.round}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f'<h1>{e(title)}</h1><p class="sub">CSID groups of the Dual-Stable Interest Exploration: who is in '
            f'each group, what the group keeps coming back to, and how its users sit in u_long space.</p>'
            f'<section class="top">{svg}<div class="facts"><table>{rows}</table></div></section>'
            f'<section class="cards">{cards}</section></body></html>\n')


def write_html(view: GroupsView, out: str | Path, *, method: Literal["pca", "tsne"] = "pca",
               max_points: int = 5000, seed: int = 0) -> Path:
    """Write :func:`render_html` (with :func:`user_map`) to ``out`` (parents created); returns the path."""
    out = Path(out)
    page = render_html(view, user_map(view, method=method, max_points=max_points, seed=seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
