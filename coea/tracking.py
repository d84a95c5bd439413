"""One small tracking interface (STYLE habit 7); only :class:`WandbTracker` and :func:`make_tracker` touch wandb.

- ``wandb``: one run per cycle, named ``round-NNN``, ``job_type="cycle"``, in a group that is a stable name derived
  from the workdir path (and run name), with ``round`` as the step metric of the round figures. Trainer curves
  (:meth:`Tracker.log_history`) get their own step metric, ``<stage>/global_step``. Artifacts
  (:meth:`Tracker.log_artifact`) carry models, candidates and the KV table with a sample Table. Offline unless
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("coea.tracking")

PLOT_METRICS = ("val/C-H@1", "val/C-N@5", "val/NCP@5", "val/CLTP@5", "pco/dpo_loss", "pco/kl",
                "relevance/accuracy", "keys/count", "keys/aligned")


HEADLINE = ("val/C-H@1", "val/C-N@5", "val/NCP@5", "val/CLTP@5")


@dataclass
class TableData:
    """Rows for a W&B Table: ``columns`` names, ``rows`` lists of str / int / float cells (one per column)."""

    columns: list[str]
    rows: list[list[Any]]


class Tracker(Protocol):
    """Where a cycle's figures go. Implementations never raise from these methods."""

    def log(self, metrics: Mapping[str, Any], round: int) -> None: ...
    def log_history(self, prefix: str, rows: Sequence[Mapping[str, Any]], *, step: str = "step",
                    step_name: str = "global_step") -> None: ...
    def log_artifact(self, name: str, type: str, *, paths: Sequence[Path] = (), aliases: Sequence[str] = (),
                     metadata: Mapping[str, Any] | None = None, table: TableData | None = None) -> None: ...
    def use_artifact(self, name: str, alias: str) -> None: ...
    def log_table(self, key: str, table: TableData, round: int) -> None: ...
    def summary(self, metrics: Mapping[str, Any]) -> None: ...
    def alert(self, title: str, text: str) -> None: ...
    def finish(self) -> None: ...


def artifact_name(kind: str, group: str) -> str:
    """W&B artifact name of one workdir's ``kind`` (``novelty-adapter``, ``relevance-model``, ``candidates``,
    ``kv-table``): ``<kind>-<group>``, so two workdirs in one project never share a version history."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}-{group}")[:128]


def _meta(value: Any) -> Any:
    """Artifact metadata: JSON values, nested lists and dicts kept (leaves as :func:`_jsonable`)."""
    if isinstance(value, Mapping):
        return {str(k): _meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_meta(v) for v in value]
    return _jsonable(value)


def _numeric(value: Any) -> float | int | None:
    value = _jsonable(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


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

    def log_history(self, prefix: str, rows: Sequence[Mapping[str, Any]], *, step: str = "step",
                    step_name: str = "global_step") -> None:
        pass

    def log_artifact(self, name: str, type: str, *, paths: Sequence[Path] = (), aliases: Sequence[str] = (),
                     metadata: Mapping[str, Any] | None = None, table: TableData | None = None) -> None:
        pass

    def use_artifact(self, name: str, alias: str) -> None:
        pass

    def log_table(self, key: str, table: TableData, round: int) -> None:
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
    "summary": {...}}``, ``{"kind": "alert", "round", "time", "title", "text"}`` and ``{"kind": "artifact", "round",
    "time", "name", "type", "aliases", "paths", "metadata"}`` (what W&B would hold; the files stay where they are).
    Trainer curves are not copied: each stage folder keeps its ``trainer_state.json``. Non-finite floats are
    written as null. A write error is logged once and ignored.
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

    def log_history(self, prefix: str, rows: Sequence[Mapping[str, Any]], *, step: str = "step",
                    step_name: str = "global_step") -> None:
        pass

    def log_artifact(self, name: str, type: str, *, paths: Sequence[Path] = (), aliases: Sequence[str] = (),
                     metadata: Mapping[str, Any] | None = None, table: TableData | None = None) -> None:
        self._write({"kind": "artifact", "round": self.round, "time": time.time(), "name": name, "type": type,
                     "aliases": list(aliases), "paths": [str(p) for p in paths],
                     "metadata": _meta(dict(metadata or {})),
                     "table_rows": len(table.rows) if table is not None else 0})

    def use_artifact(self, name: str, alias: str) -> None:
        pass

    def log_table(self, key: str, table: TableData, round: int) -> None:
        pass

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

    Every metric is declared with ``define_metric`` before its first value: round figures against ``round``,
    trainer curves against their stage's ``<prefix>/global_step``. A W&B error after init is logged once and turns
    W&B off for the rest of this tracker's life; the local lines continue.
    """

    def __init__(self, run: Any, local: LocalTracker | NullTracker, *, online: bool = False,
                 copy_max_mb: float = 100.0) -> None:
        self.run = run
        self.local = local
        self.online = online
        self.copy_max_mb = copy_max_mb
        self._defined: set[str] = {"round"}

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if self.run is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking never fails a cycle
            log.warning("W&B %s failed (%s: %s); W&B is off for the rest of this cycle", what, type(exc).__name__,
                        exc)
            self.run = None
            return None

    def _define(self, names: Sequence[str], step_metric: str) -> None:
        for name in names:
            if name not in self._defined and self.run is not None:
                self._call("define_metric", self.run.define_metric, name, step_metric=step_metric)
                self._defined.add(name)

    def log(self, metrics: Mapping[str, Any], round: int) -> None:
        self.local.log(metrics, round)
        row = {str(k): v for k, v in metrics.items() if v is not None and k != "round"}
        if self.run is not None:
            self._define(list(row), "round")
            self._call("log", self.run.log, {"round": round, **row})

    def log_history(self, prefix: str, rows: Sequence[Mapping[str, Any]], *, step: str = "step",
                    step_name: str = "global_step") -> None:
        """Replay a trainer's log history: ``<prefix>/<metric>`` against ``<prefix>/<step_name>`` (= row[step]).

        Rows without ``step`` are skipped; Hugging Face's closing row (``train_runtime``, ``train_loss`` ...) goes
        to the run summary under the prefix instead of the curves.
        """
        self.local.log_history(prefix, rows, step=step, step_name=step_name)
        if self.run is None:
            return
        step_key = f"{prefix}/{step_name}"
        if step_key not in self._defined:
            self._call("define_metric", self.run.define_metric, step_key)
            self._defined.add(step_key)
        closing: dict[str, Any] = {}
        for row in rows:
            values = {f"{prefix}/{k}": v for k, v in ((k, _numeric(v)) for k, v in row.items() if k != step)
                      if v is not None}
            if "train_runtime" in row:
                closing.update(values)
                continue
            if _numeric(row.get(step)) is None or not values:
                continue
            self._define(list(values), step_key)
            self._call("log", self.run.log, {step_key: _numeric(row[step]), **values})
            if self.run is None:
                return
        if closing:
            self._call("summary", self.run.summary.update, closing)

    def log_artifact(self, name: str, type: str, *, paths: Sequence[Path] = (), aliases: Sequence[str] = (),
                     metadata: Mapping[str, Any] | None = None, table: TableData | None = None) -> None:
        """A W&B artifact of ``paths`` (files or folders) and an optional Table named ``sample``.

        A folder larger than ``tracking.artifact_copy_max_mb`` is added as a ``file://`` reference (checksums, no
        copy); smaller ones are copied into W&B's staging area and uploaded by ``wandb sync``.
        """
        self.local.log_artifact(name, type, paths=paths, aliases=aliases, metadata=metadata, table=table)
        if self.run is None:
            return

        def build_and_log() -> None:
            import wandb

            art = wandb.Artifact(name, type=type, metadata=_meta(dict(metadata or {})))
            for path in map(Path, paths):
                if path.is_dir():
                    if _size_mb(path) > self.copy_max_mb:
                        art.add_reference(path.resolve().as_uri(), name=path.name)
                    else:
                        art.add_dir(str(path), name=path.name)
                elif path.is_file():
                    art.add_file(str(path), name=path.name)
            if table is not None:
                art.add(wandb.Table(columns=table.columns, data=table.rows), "sample")
            self.run.log_artifact(art, aliases=list(aliases))

        self._call(f"log_artifact {name}", build_and_log)

    def log_table(self, key: str, table: TableData, round: int) -> None:
        """The Table in the run's history at ``round`` (what the workspace shows next to the round charts)."""
        if self.run is None:
            return

        def log_it() -> None:
            import wandb

            self._define([key], "round")
            self.run.log({"round": round, key: wandb.Table(columns=table.columns, data=table.rows)})

        self._call(f"log {key}", log_it)

    def use_artifact(self, name: str, alias: str) -> None:
        """Declare ``name:alias`` an input of this run (online only: wandb refuses ``use_artifact`` offline)."""
        if self.run is None or not self.online:
            return
        try:
            self.run.use_artifact(f"{name}:{alias}")
        except Exception as exc:  # noqa: BLE001 - e.g. an earlier round logged offline and never synced
            log.info("W&B: input %s:%s not found on the server (%s); lineage in the artifacts' metadata only",
                     name, alias, exc)

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


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


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
                 config: Mapping[str, Any] | None = None, name: str = "", job_type: str = "cycle") -> Tracker:
    """The tracker ``cfg`` (the ``tracking`` section, :class:`coea.config.TrackingConfig`) asks for.

    Args:
        cfg: ``backend`` (wandb | local | none), ``mode``, ``project``, ``init_timeout_s`` and, when present,
            ``finish_timeout_s``, ``group``, ``entity``.
        workdir: the deployment's work directory; local lines go to ``workdir/tracking/metrics.jsonl`` and the
            W&B run files under ``$WANDB_DIR`` if set, else ``workdir/tracking`` (``.../wandb/offline-run-*``).
        round: the round this cycle runs; the run is named ``round-NNN``.
        run_name: ``run.name`` from the config; part of the derived group.
        config: recorded as the W&B run's config (e.g. the resolved coea config).
        name: the W&B run's name (and id prefix); default ``round-NNN``. ``coea simulate`` names one run per arm.
        job_type: the W&B job type (``cycle``; ``simulate`` for the simulation's runs).

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
            job_type=job_type, name=name or f"round-{round:03d}", dir=str(wandb_dir), mode=wandb_mode(cfg.mode),
            id=f"{name or f'round-{round:03d}'}-{secrets.token_hex(4)}",  # fresh every run: never resumed
            resume="never", reinit="finish_previous", settings=settings,
            config={"round": round, "workdir": str(Path(workdir).resolve()), "pid": os.getpid(),
                    **(dict(config) if config else {})},
        )
        run.define_metric("round")  # every other metric is declared against its own step before its first value
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - tracking must never fail a cycle
        if run is not None:  # created but define_metric failed: close it rather than leak it
            try:
                run.finish()
            except (Exception, SystemExit) as finish_exc:  # noqa: BLE001
                log.debug("W&B finish after a failed init: %s", finish_exc)
        log.warning("W&B init failed (%s: %s); continuing with local tracking only (%s)", type(exc).__name__, exc,
                    local.path)
        return local
    return WandbTracker(run, local, online=wandb_mode(cfg.mode) == "online",
                        copy_max_mb=float(getattr(cfg, "artifact_copy_max_mb", 100.0)))


def plot_rounds(history: Sequence[Mapping[str, Any]], out_png: str | Path,
                metrics: Sequence[str] = PLOT_METRICS, *, title: str = "") -> Path:
    """PNG of the rounds so far: a one-round summary, or one small panel per metric across rounds.

    With a single round a line chart would be one dot per panel, so the PNG is a summary instead: bars of the
    validation metrics among ``metrics`` with their values (3 digits) and a table of the other figures. From two
    rounds on it has one panel per metric present in ``history``, against the round.

    Args:
        history: one dict per round with a ``round`` key and metric values; non-numeric or non-finite values
            are skipped.
        out_png: where to write; replaced atomically (a crash never leaves half a PNG).
        metrics: the metric names to draw, in panel order.
        title: the figure's title (e.g. the workdir); the rounds shown are appended.

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
    rounds = sorted({r for m in present for r, _ in series[m]})
    heading = " - ".join(t for t in (title, _rounds_label(rounds)) if t)
    if len(rounds) == 1:
        fig = _one_round_figure(Figure, {m: series[m][-1][1] for m in present}, heading)
    else:
        cols = max(1, min(4, len(present)))
        rows = max(1, (len(present) + cols - 1) // cols)
        fig = Figure(figsize=(3.2 * cols, 2.4 * rows + 0.4))
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
        if heading:
            fig.suptitle(heading, fontsize=10)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=80, format="png")
    os.replace(tmp, out_png)
    return out_png


def _rounds_label(rounds: Sequence[int]) -> str:
    if not rounds:
        return ""
    return f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {rounds[0]}-{rounds[-1]}"


def _one_round_figure(Figure, values: Mapping[str, float], heading: str):
    """Bars of the validation metrics (values written at the bars) beside a table of the other figures."""
    bars = [m for m in values if m.startswith("val/")]
    others = [m for m in values if m not in bars]
    fig = Figure(figsize=(9.0, 3.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    if bars:
        names = [m.removeprefix("val/") for m in bars][::-1]
        ys = [values[m] for m in bars][::-1]
        left.barh(names, ys, color="#4c72b0")
        top = max(1.0, max(ys) * 1.15)
        left.set_xlim(0, top)
        for i, v in enumerate(ys):
            left.text(v + top * 0.01, i, f"{v:.3f}", va="center", fontsize=9)
        left.set_title("validation", fontsize=10)
        left.tick_params(labelsize=9)
    else:
        left.axis("off")
        left.text(0.5, 0.5, "no validation metrics", ha="center", va="center")
    right.axis("off")
    if others:
        cells = [[m, f"{values[m]:.3f}" if abs(values[m]) < 1000 and not float(values[m]).is_integer()
                  else f"{values[m]:,.0f}"] for m in others]
        table = right.table(cellText=cells, colLabels=["figure", "value"], loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1.0, 1.3)
    elif not bars:
        right.text(0.5, 0.5, "no metrics yet", ha="center", va="center")
    if heading:
        fig.suptitle(heading, fontsize=11)
    return fig
