"""The short summary a command prints when it finishes (``coea cycle``, ``rounds``, ``bootstrap``, ``dsie``).

A handful of lines: what happened (round K promoted / not / nothing new), the keys and the share with aligned
categories, four headline validation metrics with 3 digits, one line of stage times, and where the files are
(round folder, metrics.png, log file, W&B run). ``fancy`` (stdout is a terminal) adds colour and aligned labels;
otherwise the lines are plain ``label: value`` text for cron logs. :func:`result_json` is the ``--json`` form.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from coea.workdir import read_json, round_dir

HEADLINE = ("val/C-H@1", "val/C-N@5", "val/NCP@5", "val/CLTP@5")
STAGE_NAMES = {"time/data_dsie_s": "data + DSIE", "time/kv_s": "KV", "time/pco_s": "DPO + KL",
               "time/relevance_s": "Relevance update"}


def cycle_status(result: Any) -> str:
    """``promoted`` | ``refused`` | ``nothing_new`` (or whatever ``result.status`` says when it has one)."""
    status = getattr(result, "status", None)
    if status:
        return str(status)
    if result.promoted:
        return "promoted"
    return "nothing_new" if "no new events" in (result.reason or "") else "refused"


def seconds(s: float | None) -> str:
    """``0.8 s``, ``12 s``, ``2m 05s``, ``1h 02m``."""
    if s is None or not math.isfinite(s):
        return "?"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def files(result: Any, workdir: Path | None, log_path: Path | None) -> dict[str, str]:
    """Where a result's files are: round folder, metrics.png, log file, this round's offline W&B run."""
    out: dict[str, str] = {}
    k = getattr(result, "round", None)
    if workdir is not None and isinstance(k, int):
        rd = round_dir(workdir, k)
        if rd.is_dir():
            out["round"] = str(rd)
        if (rd / "metrics.png").is_file():
            out["plot"] = str(rd / "metrics.png")
        run = _wandb_run(workdir, k)
        if run is not None:
            out["wandb"] = str(run)
    if log_path is not None:
        out["log"] = str(log_path)
    return out


def result_json(result: Any, workdir: Path | None, log_path: Path | None) -> dict[str, Any]:
    """The ``--json`` result: the result's fields (timings once, inside ``metrics``), ``status``, ``files``."""
    if dataclasses.is_dataclass(result):
        data = dataclasses.asdict(result)
    elif isinstance(result, dict):
        data = dict(result)
    else:
        data = {"result": str(result)}
    if hasattr(result, "promoted") and hasattr(result, "metrics"):
        data.pop("timings", None)  # the same figures are metrics["time/*"]
        data["status"] = cycle_status(result)
    data["files"] = files(result, workdir, log_path)
    return data


def render(result: Any, workdir: Path | None, *, log_path: Path | None = None, elapsed: float | None = None,
           heading: str = "", fancy: bool = False) -> list:
    """The summary lines (rich ``Text`` when ``fancy``, else ``str``)."""
    if hasattr(result, "promoted") and hasattr(result, "metrics"):
        head, rows, style = _cycle(result, workdir, elapsed)
    elif hasattr(result, "novelty_hit_at_5"):
        head, rows, style = _bootstrap(result, workdir)
    elif isinstance(result, dict) and "n_groups" in result:
        head, rows, style = _dsie(result)
    else:
        head, rows, style = str(result), [], ""
    if heading:
        head = f"{heading}: {head}"
    if hasattr(result, "promoted") and cycle_status(result) == "nothing_new":
        # One line: nothing ran, so there is no round folder, plot or metric to point at (cron reads this line).
        return _format(head + (f" (log: {log_path})" if log_path else ""), [], style, fancy)
    where = files(result if hasattr(result, "round") else _Round0(), workdir, log_path)
    labels = {"round": "files", "plot": "plot", "log": "log", "wandb": "W&B run"}
    rows += [(labels[k], v) for k, v in where.items()]
    nxt = _next_step(result, workdir)
    if nxt:
        rows.append(("try", nxt))
    return _format(head, rows, style, fancy)


class _Round0:
    round = 0


def _format(head: str, rows: list[tuple[str, str]], style: str, fancy: bool) -> list:
    if not fancy:
        return [head, *(f"  {label}: {value.replace(' · ', ', ')}" for label, value in rows)]
    from rich.text import Text

    mark = {"green": "✔ ", "yellow": "✘ ", "cyan": "• "}.get(style, "")
    width = max((len(label) for label, _ in rows), default=0)
    return [Text(mark + head, style=f"bold {style}".strip()),
            *(Text.assemble((f"  {label:<{width}}  ", "dim"), value) for label, value in rows)]


def _metric_line(metrics: dict[str, Any]) -> str:
    parts = [f"{m.removeprefix('val/')} {metrics[m]:.3f}" for m in HEADLINE
             if isinstance(metrics.get(m), (int, float)) and math.isfinite(metrics[m])]
    users = metrics.get("val/users")
    return " · ".join(parts) + (f" ({users:,} held-out users)" if users else "") if parts else ""


def _cycle(result: Any, workdir: Path | None, elapsed: float | None) -> tuple[str, list[tuple[str, str]], str]:
    m = result.metrics or {}
    status = cycle_status(result)
    served = _served(workdir)
    if status == "promoted":
        head, style = f"round {result.round} promoted: serving it now", "green"
    elif status == "nothing_new":
        head = f"nothing new after round {result.round}: {result.reason or 'no new events'}"
        head += f"; round {served} stays served" if served is not None else ""
        style = "cyan"
    else:
        head = f"round {result.round} NOT promoted" + (f": {result.reason}" if result.reason else "")
        head += f"; round {served} stays served" if served is not None else ""
        style = "yellow"
    rows: list[tuple[str, str]] = []
    if "keys/count" in m:
        keys = int(m["keys/count"])
        text = f"{keys:,} keys for {int(m.get('keys/users', 0)):,} users"
        with_aligned = _keys_with_aligned(workdir, result.round)
        if with_aligned is not None and keys:
            text += f" · {with_aligned:,} with aligned categories ({with_aligned / keys:.0%})"
        rows.append(("keys", text))
    metric_line = _metric_line(m)
    if metric_line:
        rows.append(("validation", metric_line))
    stages = [(STAGE_NAMES.get(k, k[len("time/"):-len("_s")].replace("_", " ")), v) for k, v in m.items()
              if k.startswith("time/") and k.endswith("_s") and isinstance(v, (int, float))]
    if stages or elapsed is not None:
        total = seconds(elapsed) if elapsed is not None else seconds(sum(v for _, v in stages))
        rows.append(("time", f"{total} in all" + (": " + " · ".join(f"{name} {seconds(v)}" for name, v in stages)
                                                 if stages else "")))
    return head, rows, style


def _bootstrap(result: Any, workdir: Path | None) -> tuple[str, list[tuple[str, str]], str]:
    rep = result.report or {}
    nov = rep.get("novelty", {})
    rows = [("Novelty", f"hit@5 {result.novelty_hit_at_5:.3f} vs most-popular {result.popularity_hit_at_5:.3f} on "
                        f"{nov.get('validation_cases', '?')} held-out novel clicks · SFT loss "
                        f"{result.sft_final_loss:.3f}"),
            ("Relevance", f"held-out pairwise accuracy {result.relevance_accuracy:.3f}"),
            ("keys", f"{result.keys:,} keys for {result.users:,} users")]
    times = rep.get("wall_time_s") or {}
    if times:
        rows.append(("time", " · ".join(f"{k.removesuffix('_s').replace('_', ' ')} {seconds(v)}"
                                        for k, v in times.items())))
    return "round 0 bootstrapped", rows, "green"


def _dsie(report: dict[str, Any]) -> tuple[str, list[tuple[str, str]], str]:
    rows = [("groups", f"{report['n_groups']} CSID groups from {report.get('n_code_tuples', '?')} code tuples · "
                       f"{report.get('n_cold', 0)} cold-start users of {report.get('n_users', '?')}")]
    fig3 = report.get("figure3") or {}
    if "intra" in fig3:
        rows.append(("Figure 3", f"intra-group cosine {fig3['intra']:.3f} vs inter-group {fig3['inter']:.3f}"))
    truth = report.get("ground_truth") or {}
    if "purity" in truth:
        rows.append(("truth", f"purity {truth['purity']:.3f} · NMI {truth.get('nmi', float('nan')):.3f}"))
    if report.get("reconstruction_error") is not None:
        rows.append(("RQ-VAE", f"reconstruction error {report['reconstruction_error']:.4f}"))
    return "DSIE finished", rows, "green"


def _served(workdir: Path | None) -> int | None:
    if workdir is None or not (workdir / "state.json").is_file():
        return None
    return read_json(workdir / "state.json").get("promoted_round")


def _keys_with_aligned(workdir: Path | None, k: int) -> int | None:
    if workdir is None:
        return None
    path = round_dir(workdir, k) / "candidates" / "summary.json"
    return int(read_json(path)["keys_with_aligned"]) if path.is_file() else None


def _wandb_run(workdir: Path, k: int) -> Path | None:
    """This round's newest offline W&B run folder under ``WORKDIR/tracking/wandb`` (None when there is none)."""
    runs = sorted((workdir / "tracking" / "wandb").glob(f"offline-run-*-round-{k:03d}-*"))
    return runs[-1] if runs else None


def _next_step(result: Any, workdir: Path | None) -> str:
    if workdir is None:
        return ""
    if hasattr(result, "promoted") and hasattr(result, "metrics"):
        if cycle_status(result) != "promoted":
            return f"coea status --workdir {workdir}"
        user = _example_user(workdir, result.round)
        return f"coea lookup --workdir {workdir} --user {user}" if user else ""
    if hasattr(result, "novelty_hit_at_5"):
        return f"coea cycle --config CONFIG --workdir {workdir}"
    return ""


def _example_user(workdir: Path, k: int) -> str | None:
    """A user of round k whose key has aligned categories (the first in id order), for the 'try' line."""
    import pandas as pd

    rd = round_dir(workdir, k)
    try:
        users = pd.read_parquet(rd / "users.parquet")
        table = pd.read_parquet(rd / "candidates" / "candidates.parquet", columns=["csid", "recent", "aligned"])
    except (OSError, ValueError):
        return None
    good = {(c, tuple(r)) for c, r, a in zip(table["csid"], table["recent"], table["aligned"]) if len(a)}
    hits = sorted(u for u, c, r in zip(users["user_id"], users["csid"], users["recent"]) if (c, tuple(r)) in good)
    return str(hits[0]) if hits else (str(users["user_id"].min()) if len(users) else None)
