"""One small tracking interface (STYLE habit 7); only :class:`WandbTracker` and :func:`make_tracker` touch wandb.

- ``wandb``: one run per cycle, named ``round-NNN``, ``job_type="cycle"``, in a group that is a stable name derived
  from the workdir path (and run name), with ``round`` as the step metric (``define_metric``). Offline unless
  ``tracking.mode: online``; offline runs are never resumed (a fresh id per cycle). Any init failure or timeout
  falls back to local files with a warning, and a later W&B error only disables W&B for the rest of the cycle: a
  cycle never fails because of tracking. Local JSON lines are written too.
- ``local``: ``WORKDIR/tracking/metrics.jsonl``.
- ``none``: nothing (alerts still reach the log).

Metric names are namespaced (``val/C-H@1``, ``pco/kl``, ``keys/count``, ``time/<stage>_s``; docs/metrics.md) and
every call carries the round. :func:`plot_rounds` draws the metrics across rounds into a PNG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("coea.tracking")

PLOT_METRICS = ("val/C-H@1", "val/C-N@5", "val/NCP@5", "val/CLTP@5", "pco/dpo_loss", "pco/kl",
                "relevance/accuracy", "keys/count", "keys/aligned")


class Tracker(Protocol):
    """Where a cycle's figures go. Implementations never raise from these methods."""

    def log(self, metrics: Mapping[str, Any], round: int) -> None: ...
    def summary(self, metrics: Mapping[str, Any]) -> None: ...
    def alert(self, title: str, text: str) -> None: ...
    def finish(self) -> None: ...


def _jsonable(value: Any) -> Any:
    """A JSON value for ``value``: numpy scalars unwrapped, NaN/inf -> null (strict JSON), else ``str``."""
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class NullTracker:
    """Tracks nothing; alerts still go to the log as warnings."""

    def log(self, metrics: Mapping[str, Any], round: int) -> None:
        pass

    def summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def alert(self, title: str, text: str) -> None:
        log.warning("%s: %s", title, text)

    def finish(self) -> None:
        pass


class LocalTracker:
    """Appends one JSON object per call to ``directory/metrics.jsonl``.

    Lines: ``{"kind": "log", "round", "time", <metric>: value, ...}``, ``{"kind": "summary", "round", "time",
    "summary": {...}}`` and ``{"kind": "alert", "round", "time", "title", "text"}``. Non-finite floats are written as
    null. A write error is logged once and ignored.
    """

    def __init__(self, directory: str | Path, *, round: int | None = None) -> None:
        self.path = Path(directory) / "metrics.jsonl"
        self.round = round
        self._failed = False

    def _write(self, row: dict[str, Any]) -> None:
        if self._failed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(row, allow_nan=False) + "\n")
        except (OSError, ValueError) as exc:  # a full disk must not fail the cycle; the guardrail sees the rest
            self._failed = True
            log.warning("local tracking disabled: cannot write %s (%s)", self.path, exc)

    def log(self, metrics: Mapping[str, Any], round: int) -> None:
        self.round = round
        self._write({"kind": "log", "round": round, "time": time.time(),
                     **{str(k): _jsonable(v) for k, v in metrics.items() if k not in ("kind", "round", "time")}})

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self._write({"kind": "summary", "round": self.round, "time": time.time(),
                     "summary": {str(k): _jsonable(v) for k, v in metrics.items()}})

    def alert(self, title: str, text: str) -> None:
        log.warning("%s: %s", title, text)
        self._write({"kind": "alert", "round": self.round, "time": time.time(), "title": title, "text": text})

    def finish(self) -> None:
        pass


class WandbTracker:
    """One W&B run (from :func:`make_tracker`) plus the local JSON lines.

    A W&B error after init is logged once and turns W&B off for the rest of this tracker's life; the local
    lines continue.
    """

    def __init__(self, run: Any, local: LocalTracker | NullTracker) -> None:
        self.run = run
        self.local = local

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking never fails a cycle
            log.warning("W&B %s failed (%s: %s); W&B is off for the rest of this cycle", what, type(exc).__name__,
                        exc)
            self.run = None

    def log(self, metrics: Mapping[str, Any], round: int) -> None:
        self.local.log(metrics, round)
        row = {str(k): v for k, v in metrics.items() if v is not None and k != "round"}
        if self.run is not None:
            self._call("log", self.run.log, {"round": round, **row})

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self.local.summary(metrics)
        if self.run is not None:
            self._call("summary", self.run.summary.update, {str(k): v for k, v in metrics.items()})

    def alert(self, title: str, text: str) -> None:
        self.local.alert(title, text)
        if self.run is None:
            return
        try:
            self.run.alert(title=title, text=text)
        except Exception as exc:  # noqa: BLE001 - offline runs cannot send alerts; the log and metrics.jsonl have it
            log.debug("W&B alert not sent: %s", exc)

    def finish(self) -> None:
        self.local.finish()
        if self.run is not None:
            self._call("finish", self.run.finish)
        self.run = None


def workdir_group(workdir: str | Path, run_name: str = "") -> str:
    """Stable W&B group for a workdir: ``[<run name>-]<folder name>-<8 hex of sha1(absolute path)>``.

    The same workdir always gets the same group, so its rounds line up; two workdirs with the same folder name
    in different places do not collide.
    """
    path = str(Path(workdir).resolve())
    name = f"{run_name}-{Path(path).name}" if run_name else Path(path).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]
    return f"{name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def wandb_mode(configured: str) -> str:
    """The W&B mode to use: ``offline`` unless ``configured == "online"`` and ``WANDB_MODE`` does not say offline.

    An environment ``WANDB_MODE`` of ``offline``/``dryrun`` downgrades an online config (an operator can cut the
    network without editing YAML); it never upgrades an offline config to online.
    """
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    return "online" if configured == "online" and env not in ("offline", "dryrun") else "offline"


def make_tracker(cfg: Any, workdir: str | Path, round: int, *, run_name: str = "",
                 config: Mapping[str, Any] | None = None) -> Tracker:
    """The tracker ``cfg`` (the ``tracking`` section, :class:`coea.config.TrackingConfig`) asks for.

    Args:
        cfg: ``backend`` (wandb | local | none), ``mode``, ``project``, ``init_timeout_s`` and, when present,
            ``finish_timeout_s``, ``group``, ``entity``.
        workdir: the deployment's work directory; local lines go to ``workdir/tracking/metrics.jsonl`` and the
            W&B run files under ``$WANDB_DIR`` if set, else ``workdir/tracking`` (``.../wandb/offline-run-*``).
        round: the round this cycle runs; the run is named ``round-NNN``.
        run_name: ``run.name`` from the config; part of the derived group.
        config: recorded as the W&B run's config (e.g. the resolved coea config).

    Returns:
        A :class:`WandbTracker`, or on any W&B failure (import, service start, init, timeout) or
        ``WANDB_MODE=disabled`` a :class:`LocalTracker` (failures log a warning). Never raises for W&B reasons.
    """
    directory = Path(workdir) / "tracking"
    if cfg.backend == "none":
        return NullTracker()
    local = LocalTracker(directory, round=round)
    if cfg.backend == "local":
        return local
    if os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
        log.info("WANDB_MODE=disabled: local tracking only")
        return local
    wandb_dir = Path(os.environ.get("WANDB_DIR") or directory)
    run = None
    try:
        import wandb

        wandb_dir.mkdir(parents=True, exist_ok=True)
        timeout = float(cfg.init_timeout_s)
        wandb.setup(wandb.Settings(x_service_wait=timeout))  # bounds the wandb-core start, which init does not
        settings = wandb.Settings(init_timeout=timeout, silent=True, console="off",
                                  finish_timeout=float(getattr(cfg, "finish_timeout_s", 0.0)))
        run = wandb.init(
            project=cfg.project, entity=getattr(cfg, "entity", "") or None,
            group=getattr(cfg, "group", "") or workdir_group(workdir, run_name),
            job_type="cycle", name=f"round-{round:03d}", dir=str(wandb_dir), mode=wandb_mode(cfg.mode),
            id=f"round-{round:03d}-{secrets.token_hex(4)}",  # fresh every cycle: an offline run is never resumed
            resume="never", reinit="finish_previous", settings=settings,
            config={"round": round, "workdir": str(Path(workdir).resolve()), "pid": os.getpid(),
                    **(dict(config) if config else {})},
        )
        run.define_metric("round")
        run.define_metric("*", step_metric="round")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - tracking must never fail a cycle
        if run is not None:  # created but define_metric failed: close it rather than leak it
            try:
                run.finish()
            except (Exception, SystemExit) as finish_exc:  # noqa: BLE001
                log.debug("W&B finish after a failed init: %s", finish_exc)
        log.warning("W&B init failed (%s: %s); continuing with local tracking only (%s)", type(exc).__name__, exc,
                    local.path)
        return local
    return WandbTracker(run, local)


def plot_rounds(history: Sequence[Mapping[str, Any]], out_png: str | Path,
                metrics: Sequence[str] = PLOT_METRICS) -> Path:
    """PNG of ``metrics`` across rounds, one small panel per metric present in ``history``.

    Args:
        history: one dict per round with a ``round`` key and metric values; non-numeric or non-finite values
            are skipped.
        out_png: where to write; replaced atomically (a crash never leaves half a PNG).
        metrics: the metric names to draw, in panel order.

    Returns:
        ``out_png``. With no metric present the PNG says so instead of failing.
    """
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # no pyplot: no global backend switch
    )
    from matplotlib.figure import Figure

    def points(name: str) -> list[tuple[float, float]]:
        pts = []
        for h in history:
            v, r = h.get(name), h.get("round")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and r is not None:
                pts.append((r, float(v)))
        return sorted(pts)

    series = {m: points(m) for m in metrics}
    present = [m for m in metrics if series[m]]
    cols = max(1, min(4, len(present)))
    rows = max(1, (len(present) + cols - 1) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, present):
        xs, ys = zip(*series[name])
        ax.plot(xs, ys, marker="o")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if not present:
        axes.flat[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=80, format="png")
    os.replace(tmp, out_png)
    return out_png
