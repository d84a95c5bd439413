"""One small tracking interface (STYLE habit 7). Only :class:`WandbTracker` imports wandb.

- ``wandb``: one run per cycle, named ``round-NNN``, grouped by a stable name derived from the workdir, with
  ``round`` as the step metric (``define_metric``). Offline unless ``tracking.mode: online``; offline runs are
  never resumed (a fresh id per cycle). Any init failure or timeout falls back to local files with a warning: a
  cycle never fails because of tracking. Local JSON lines are written too.
- ``local``: ``WORKDIR/tracking/metrics.jsonl``.
- ``none``: nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("coea.tracking")


class Tracker(Protocol):
    def log(self, metrics: dict[str, Any], round: int) -> None: ...  # noqa: A002
    def alert(self, title: str, text: str) -> None: ...
    def finish(self) -> None: ...


class NullTracker:
    def log(self, metrics: dict[str, Any], round: int) -> None:  # noqa: A002
        pass

    def alert(self, title: str, text: str) -> None:
        log.warning("%s: %s", title, text)

    def finish(self) -> None:
        pass


class LocalTracker(NullTracker):
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict[str, Any], round: int) -> None:  # noqa: A002
        with self.path.open("a") as fh:
            fh.write(json.dumps({"round": round, "time": time.time(), **metrics}) + "\n")

    def alert(self, title: str, text: str) -> None:
        super().alert(title, text)
        self.log({"alert": title, "text": text}, round=-1)


class WandbTracker(LocalTracker):
    def __init__(self, directory: Path, run: Any) -> None:
        super().__init__(directory)
        self.run = run

    def log(self, metrics: dict[str, Any], round: int) -> None:  # noqa: A002
        super().log(metrics, round)
        self.run.log({"round": round, **metrics})

    def alert(self, title: str, text: str) -> None:
        super().alert(title, text)
        try:
            self.run.alert(title=title, text=text)
        except Exception:  # offline runs cannot send alerts; the log has it
            pass

    def finish(self) -> None:
        self.run.finish()


def _fresh_id() -> str:
    """A new run id every cycle, so an offline run is never resumed."""
    import secrets

    return secrets.token_hex(4)


def workdir_group(workdir: Path) -> str:
    """Stable W&B group name for a workdir: its folder name plus a short hash of its absolute path."""
    path = str(Path(workdir).resolve())
    return f"{Path(path).name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def make_tracker(cfg: Any, workdir: Path, round: int) -> Tracker:  # noqa: A002
    """The tracker ``cfg`` (the ``tracking`` section) asks for; W&B failures fall back to local files."""
    directory = Path(workdir) / "tracking"
    if cfg.backend == "none":
        return NullTracker()
    if cfg.backend == "local":
        return LocalTracker(directory)
    try:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=cfg.project, group=workdir_group(workdir), job_type="cycle", name=f"round-{round:03d}",
            dir=str(directory), mode=cfg.mode, id=_fresh_id(), resume="never", reinit="finish_previous",
            settings=wandb.Settings(init_timeout=cfg.init_timeout_s, silent=True, console="off"),
            config={"round": round, "workdir": str(Path(workdir).resolve()), "pid": os.getpid()},
        )
        run.define_metric("round")
        run.define_metric("*", step_metric="round")
        return WandbTracker(directory, run)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a cycle
        log.warning("W&B init failed (%s: %s); continuing with local tracking only", type(exc).__name__, exc)
        return LocalTracker(directory)


def plot_rounds(history: list[dict[str, Any]], out_png: Path,
                metrics: tuple[str, ...] = ("val/C-H@1", "val/C-N@5", "val/NCP@5", "val/CLTP@5", "pco/kl",
                                            "pco/dpo_loss", "relevance/accuracy", "keys/aligned")) -> Path:
    """PNG of the metrics across rounds, one small panel per metric present in the history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in metrics if any(m in h for h in history)] or ["round"]
    cols = min(4, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, present):
        pts = [(h["round"], h[name]) for h in history if name in h and h[name] is not None]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
