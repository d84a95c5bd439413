"""What a person sees while coea works: one console, stage banners and progress bars with an ETA.

Library code never ``print()``s (contract 5): it logs through ``logging.getLogger("coea.<part>")``, announces a
stage with :func:`banner` and wraps long loops in :func:`progress` (``coea.workdir.progress`` is the same
function) or :func:`iterate`. The CLI (coea/cli.py) decides where all of it goes: the terminal, the run's log
file, or both.

- On a terminal the bars of every running loop share one rich live display (nested loops add a line to it
  instead of fighting over the screen) and disappear when their loop ends.
- Elsewhere (cron, CI, a pipe) nothing is redrawn: a loop that runs longer than :data:`PLAIN_EVERY_S` seconds
  logs one plain line per interval, ``<what>: 120/386 steps (31%), 0:00:20 elapsed, ETA 0:00:44``.
- :func:`lightning_progress` drives the same bars from a Lightning ``Trainer`` (the DSIE encoder, the RQ-VAE).
  Hugging Face trainers use ``loops/trainer_log.py``, built on :func:`progress` too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("coea.progress")
stage_log = logging.getLogger("coea.stage")

PLAIN_EVERY_S = 30.0  # without a terminal: at most one progress line per loop per this many seconds
BANNER = "coea_banner"  # LogRecord attribute that marks a stage banner (its value: the parts after the title)

_lock = threading.RLock()
_console = None  # the rich Console everything draws on; None = a stderr console made on first use


def console():
    """The shared rich ``Console`` (the CLI installs one bound to the real terminal; default: stderr)."""
    global _console
    with _lock:
        if _console is None:
            from rich.console import Console

            _console = Console(stderr=True)
        return _console


def set_console(con) -> None:
    """Install ``con`` as the shared console (None: back to the default). Stops a live display on the old one."""
    global _console, _live
    with _lock:
        if _live is not None:
            _live.stop()
            _live = None
        _console = con


def interactive() -> bool:
    """True when the shared console is a terminal (bars are drawn); False for cron, CI and pipes."""
    return bool(console().is_terminal)


def banner(title: str, *parts: str) -> None:
    """One line announcing a stage: ``title · part · part`` (e.g. ``Novelty SFT · 1082 examples · 136 steps``).

    Logged at INFO on ``coea.stage`` with the parts attached, so the console can style it; a log file gets the
    plain text.
    """
    parts = tuple(p for p in parts if p)
    stage_log.info("%s", " · ".join((title, *parts)), extra={BANNER: (title, parts)})


def plural(n: int | float, word: str, plural_form: str | None = None) -> str:
    """``"1 epoch"``, ``"2 epochs"``, ``"1.5 epochs"``; thousands separated (``12,345 keys``)."""
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    number = f"{n:,}" if isinstance(n, int) else f"{n:g}"
    return f"{number} {word if n == 1 else (plural_form or word + 's')}"


def duration(seconds: float | None) -> str:
    """``0:00:07`` style; ``-:--:--`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ------------------------------------------------------------------------------------------------ progress


_live = None  # the rich Progress shown on the terminal while at least one Bars handle is open
_users = 0


@dataclass
class _Plain:
    description: str
    total: float | None
    unit: str
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    reported: float = field(default_factory=time.monotonic)


class Bars:
    """A handle on the shared progress display; the subset of ``rich.progress.Progress`` coea uses.

    ``add_task(description, total=None, unit="")``, ``advance(task, advance=1)``, ``update(task, ...)``,
    ``remove_task(task)``; a context manager. Tasks still open when the handle closes are removed.
    """

    def __init__(self, **progress_kwargs: Any) -> None:
        self._kwargs = progress_kwargs
        self._own: list[int] = []
        self._plain: dict[int, _Plain] = {}
        self._next_plain = 0
        self._open = False
        self._counted = False  # this handle holds a share of the live display

    # -- lifecycle
    def __enter__(self) -> Bars:
        global _live, _users
        with _lock:
            self._open = True
            if interactive():
                if _live is None:
                    _live = _new_progress(**self._kwargs)
                    _live.start()
                _users += 1
                self._counted = True
        return self

    def __exit__(self, *exc: object) -> None:
        global _live, _users
        with _lock:
            for task in list(self._own):
                self.remove_task(task)
            for task in list(self._plain):
                self.remove_task(task)
            if self._counted and _live is not None:
                _users -= 1
                if _users <= 0:
                    _live.stop()
                    _live, _users = None, 0
            self._open = self._counted = False

    def start(self) -> None:  # rich.progress.Progress compatibility (callers that start it themselves)
        if not self._open:
            self.__enter__()

    def stop(self) -> None:
        self.__exit__(None, None, None)

    # -- tasks
    def add_task(self, description: str, total: float | None = None, *, unit: str = "", **_: Any) -> int:
        with _lock:
            if _live is not None and self._open:
                task = _live.add_task(description, total=total, unit=unit)
                self._own.append(task)
                return task
            task = self._next_plain
            self._next_plain += 1
            self._plain[task] = _Plain(description, total, unit)
            return task

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **_: Any) -> None:
        with _lock:
            if task in self._plain:
                p = self._plain[task]
                if total is not None:
                    p.total = total
                if description is not None:
                    p.description = description
                if completed is not None:
                    p.completed = completed
                if advance:
                    p.completed += advance
                _maybe_report(p)
            elif _live is not None and task in self._own:
                kwargs: dict[str, Any] = {}
                if completed is not None:
                    kwargs["completed"] = completed
                if advance:
                    kwargs["advance"] = advance
                if total is not None:
                    kwargs["total"] = total
                if description is not None:
                    kwargs["description"] = description
                _live.update(task, **kwargs)

    def remove_task(self, task: int) -> None:
        with _lock:
            if task in self._plain:
                del self._plain[task]
            elif task in self._own:
                self._own.remove(task)
                if _live is not None:
                    try:
                        _live.remove_task(task)
                    except KeyError:
                        pass

    def track(self, iterable: Iterable, description: str, total: float | None = None, *,
              unit: str = "") -> Iterator:
        """Yield from ``iterable``, advancing a task by one per item."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        task = self.add_task(description, total=total, unit=unit)
        try:
            for item in iterable:
                yield item
                self.advance(task)
        finally:
            self.remove_task(task)


def _maybe_report(p: _Plain) -> None:
    now = time.monotonic()
    if now - p.reported < PLAIN_EVERY_S:
        return
    p.reported = now
    elapsed = now - p.started
    unit = f" {p.unit}" if p.unit else ""
    if p.total:
        share = p.completed / p.total
        eta = elapsed * (1 - share) / share if share > 0 else None
        log.info("%s: %d/%d%s (%d%%), %s elapsed, ETA %s", p.description, p.completed, p.total, unit,
                 int(100 * share), duration(elapsed), duration(eta))
    else:
        log.info("%s: %d%s, %s elapsed", p.description, p.completed, unit, duration(elapsed))


def _new_progress(**kwargs: Any):
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[unit]}"), TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    kwargs.setdefault("transient", True)
    return Progress(*columns, console=console(), **kwargs)


def progress(**kwargs: Any) -> Bars:
    """A progress handle on the shared display: ``with progress() as bar: t = bar.add_task("x", total=n)``.

    Drop-in for the ``rich.progress.Progress`` that coea used before (``add_task`` / ``advance`` / ``update``);
    ``kwargs`` go to the rich ``Progress`` when this handle is the one that opens the display.
    """
    return Bars(**kwargs)


def iterate(iterable: Iterable, description: str, total: float | None = None, *, unit: str = "") -> Iterator:
    """``for x in iterate(batches, "Relevance scores", unit="batches")``: the loop with a bar (or plain lines)."""
    with progress() as bars:
        yield from bars.track(iterable, description, total, unit=unit)


# ------------------------------------------------------------------------------------------------ Lightning


def lightning_progress(description: str, *, unit: str = "batches", what: str = ""):
    """A Lightning ``Callback`` that shows training on the shared display, with a banner when it starts.

    Args:
        description: the bar's label and the banner's title, e.g. ``"DSIE encoder"``.
        unit: what one step of the bar is (the callback advances once per training batch).
        what: the banner's counts, e.g. ``"600 users"``; epochs and steps are added.
    Use with ``enable_progress_bar=False`` (Lightning's own bar would draw a second one).
    """
    import lightning as L

    class CoeaProgress(L.Callback):
        def __init__(self) -> None:
            self.bars: Bars | None = None
            self.task: int | None = None

        def on_train_start(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero:
                return
            batches = trainer.num_training_batches  # per epoch; inf for an iterable without a length
            total = int(batches * trainer.max_epochs) if batches != float("inf") and trainer.max_epochs else None
            banner(description, what, plural(trainer.max_epochs, "epoch") if trainer.max_epochs else "",
                   f"{total:,} {unit}" if total else "")
            self.bars = progress().__enter__()
            self.task = self.bars.add_task(description, total=total, unit=unit)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.bars is not None and self.task is not None:
                self.bars.advance(self.task)

        def on_train_end(self, trainer, pl_module) -> None:
            self._close()

        def on_exception(self, trainer, pl_module, exception) -> None:
            self._close()

        def _close(self) -> None:
            if self.bars is not None:
                self.bars.__exit__(None, None, None)
            self.bars, self.task = None, None

    return CoeaProgress()
