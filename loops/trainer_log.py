"""How the Hugging Face / trl trainers (SFT, reward, DPO) report while they train, and what they leave behind.

- a banner when training starts (``Novelty SFT · 1082 examples · 2 epochs · 136 steps``) and a progress bar with
  an ETA on the shared display (coea/console.py); the trainer's own ``PrinterCallback`` (the raw ``{'loss': ...}``
  lines) and tqdm bar are removed;
- every logged step at DEBUG on ``coea.trainer``: the run's log file has it, the terminal only with ``--verbose``;
- the trainer's state, Hugging Face's own ``trainer_state.json`` (``TrainerState.save_to_json``: ``log_history``,
  ``global_step``, ``max_steps`` ...), saved in the stage folder when training ends.

The trainers keep ``report_to="none"``: they run before the cycle's W&B run is opened and sometimes in launched
workers, so the cycle replays each stage's ``trainer_state.json`` into its run afterwards (``track()`` in
loops/cycle.py, coea/tracking.py; docs/metrics.md has the layout).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coea.console import Bars, banner, plural, progress

log = logging.getLogger("coea.trainer")

HISTORY_FILE = "trainer_state.json"


def round_of(stage_dir: str | Path) -> int | None:
    """The round a stage folder belongs to (``rounds/NNN/<stage>`` or its ``.<stage>.tmp``), None if not one."""
    for part in (Path(stage_dir), *Path(stage_dir).parents):
        if part.name.isdigit() and part.parent.name == "rounds":
            return int(part.name)
    return None


def _compact(logs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())


def _callback(title: str, what: str, history_dir: Path | None):
    from transformers import TrainerCallback

    class CoeaTrainerReport(TrainerCallback):
        """Banner + bar on rank 0, per-step lines to the log file, trainer_state.json at the end."""

        def __init__(self) -> None:
            self.bars: Bars | None = None
            self.task: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            epochs = "" if args.max_steps and args.max_steps > 0 else plural(float(args.num_train_epochs), "epoch")
            banner(title, what, epochs, plural(int(state.max_steps), "step"))
            self.bars = progress().__enter__()
            self.task = self.bars.add_task(title, total=state.max_steps or None, unit="steps")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bars is not None and self.task is not None:
                self.bars.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log.debug("%s step %d/%d: %s", title, state.global_step, state.max_steps, _compact(logs))

        def on_train_end(self, args, state, control, **kwargs):
            self.close()
            if history_dir is not None and state.is_world_process_zero:
                Path(history_dir).mkdir(parents=True, exist_ok=True)
                state.save_to_json(str(Path(history_dir) / HISTORY_FILE))

        def close(self) -> None:
            if self.bars is not None:
                self.bars.__exit__(None, None, None)
            self.bars, self.task = None, None

    return CoeaTrainerReport()


@contextlib.contextmanager
def reporting(trainer, title: str, what: str, history_dir: str | Path | None) -> Iterator[None]:
    """Around ``trainer.train()``: banner, bar, per-step DEBUG lines, ``history_dir/trainer_state.json``.

    Args:
        trainer: a ``transformers.Trainer`` (trl's SFT / Reward / DPO trainers are ones).
        title: what is training, e.g. ``"Novelty SFT"``; the banner's and the bar's label.
        what: the banner's counts, e.g. ``"1082 examples"``.
        history_dir: the stage folder that receives ``trainer_state.json`` (None: not saved).
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # prints every logged step as a raw dict
    trainer.remove_callback(ProgressCallback)  # tqdm bar (disable_tqdm=False only)
    report = _callback(title, what, Path(history_dir) if history_dir is not None else None)
    trainer.add_callback(report)
    try:
        yield
    finally:
        report.close()


def loss_line(title: str, curve: list[float], n: int, unit: str) -> None:
    """One INFO line after training: ``Novelty SFT: 1082 examples, loss 1.910 -> 1.602``."""
    first = curve[0] if curve else math.nan
    last = curve[-1] if curve else math.nan
    log.info("%s: %s, loss %.3f -> %.3f", title, plural(n, unit), first, last)
