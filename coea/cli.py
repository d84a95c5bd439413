"""The `coea` command line. Thin: parse, load the config, call one entry function, map errors to exit codes.

Exit codes (coea/errors.py; docs/cycle.md, Exit codes):

    0  promoted, or nothing new to train on (one line says so)
    1  a stage failed; the previous round stays served. stderr: one line with the error and the path of the
       full traceback, rounds/NNN/failure-<attempt>.log
    2  configuration, input or usage error (one line naming the problem), e.g. a mistyped --workdir
    3  another cycle holds the workdir lock (the line names the holder)
    4  the guardrail refused promotion; the previous round stays served
    5  the round failed cycle.max_attempts times and is not retried blindly: fix the data or config, then
       `coea cycle --retry` (add --fresh to redo its finished stages too)
    6  ``coea lookup``: the user, CSID, category or key is not in the promoted round's tables
    7  live log data at risk, nothing consumed: a file unreadable or missing a column, more than
       data.max_reject_fraction of a day's rows rejected, or a consumed file changed (`--reconsume`)
    8  live log gap: a day is missing and the newest complete day is more than cycle.max_gap_days later
       (write the day, or `coea cycle --skip-day YYYY-MM-DD`)

`coea rounds --n N` exits with the worst code of its cycles (0 < 4 < 1 < 8 < 7 < 2 < 3 < 5) and stops early on 2,
3, 5, 7, 8 and on "nothing new".

Console and logs (contract 5, README "Commands"): a command that works on a workdir writes everything -- coea's
messages at DEBUG, library warnings, the trainers' per-step logs, anything a library prints -- to
``WORKDIR/logs/<command>-<YYYYmmdd-HHMMSS>.log`` (``<command>-latest.log`` links to the newest; the newest
:data:`LOG_KEEP` per command are kept) and prints its path. The terminal (stderr) gets coea's own lines, stage
banners and progress bars; ``--verbose`` adds coea's debug lines and everything libraries log or print. The
result (a short summary, or JSON with ``--json``) goes to stdout, plain line by line when stdout is not a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

from coea import console as shared
from coea.config import ConfigError, explain, load_config
from coea.console import BANNER
from coea.data.mtrec import MTREC, MTREC_CLICKS_PER_USER
from coea.errors import (
    EXIT_CODES, EXIT_DATA, EXIT_EXHAUSTED, EXIT_GAP, EXIT_INPUT, EXIT_LOCKED, EXIT_OK, EXIT_REFUSED,
    AttemptsExhaustedError, LiveDataError, WorkdirError, exit_code_for, worst,
)
from coea.judge.arguments import DESCRIPTION as JUDGE_DESCRIPTION
from coea.judge.arguments import add_arguments as add_judge_arguments
from coea.wheelhouse import DEFAULT_PLATFORM, DEFAULT_PYTHON, DEFAULT_TORCH_INDEX, build_wheelhouse

log = logging.getLogger("coea")
_STDOUT = sys.stdout  # the command's result goes here; everything libraries print goes to the log (or stderr)

EXIT_UNKNOWN = 6  # coea lookup: not in the promoted round's tables
LOG_KEEP = 100  # log files kept per command in WORKDIR/logs
OUR_LOGGERS = ("coea", "loops", "storage", "quantizer", "spark_jobs")
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "fsspec", "py4j", "matplotlib", "PIL", "asyncio",
                 "git", "h5py")
HEAVY = {"dsie", "bootstrap", "cycle", "rounds", "evaluate", "simulate", "judge"}  # commands that load transformers
CREATES_WORKDIR = {"dsie", "bootstrap", "cycle", "rounds"}  # the others log to a workdir only if it exists
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

DESCRIPTION = """\
coea trains two LLMs together for serendipitous recommendation (CoEA: Dual-Stable Interest Exploration and
Periodic Collaborative Optimization). Each daily `coea cycle` proposes categories a user has not explored lately,
keeps those aligned with their interests, trains both models a little further and publishes a key-value table
that serving reads: (group CSID, recent categories) -> novel categories with scores."""

EPILOG = """\
first run (a few minutes on a laptop CPU):
  coea cycle --config configs/demo.yaml --workdir workdirs/demo
  coea lookup --workdir workdirs/demo --user u008
  coea status --workdir workdirs/demo
  coea simulate --config configs/sim.yaml --out runs/sim     # closed-loop A/B of every arm

every command takes --help; configuration keys: coea config --explain
logs: WORKDIR/logs/<command>-<time>.log (library warnings and trainer steps; -v shows them here too)
exit codes: 0 ok / promoted / nothing new, 1 a stage failed, 2 configuration or input error, 3 workdir locked,
            4 guardrail refused promotion, 5 round gave up after cycle.max_attempts failures (--retry),
            6 lookup: not in the promoted round's tables, 7 live log data unreadable / rejected / changed
            (nothing consumed), 8 live log gap older than cycle.max_gap_days
docs: README.md and docs/ in the repository"""


# ------------------------------------------------------------------------------------------ console and logs


class _Capture(io.TextIOBase):
    """A text stream that turns what libraries print into log records (one per line) on ``logger``."""

    def __init__(self, logger: str, real) -> None:
        super().__init__()
        self.logger = logging.getLogger(logger)
        self.real = real
        self._buf = ""
        self._busy = threading.local()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # libraries that ask for a descriptor get the real one
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, text: str) -> int:
        if getattr(self._busy, "on", False):  # a handler that writes to sys.stderr: do not loop
            return self.real.write(text)
        self._busy.on = True
        try:
            self._buf += text.replace("\r", "\n")
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                if line.strip():
                    self.logger.info("%s", line.rstrip())
        finally:
            self._busy.on = False
        return len(text)

    def flush(self) -> None:
        pass

    def close_partial(self) -> None:
        if self._buf.strip():
            self.logger.info("%s", self._buf.rstrip())
        self._buf = ""


class _ConsoleHandler(logging.Handler):
    """coea's lines on the terminal: time, message; banners stand out, warnings and errors are marked.

    Shows coea's INFO and above (and errors from anywhere); with ``verbose`` coea's DEBUG and every library's
    INFO and above too.
    """

    def __init__(self, con, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.con = con
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.split(".")[0] in OUR_LOGGERS
        if self.verbose:
            return ours or record.levelno >= logging.INFO
        return (ours and record.levelno >= logging.INFO) or (
            record.levelno >= logging.ERROR and record.name != "py.warnings")

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text  # rich loads with the first log line, not for `coea --help`

        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            message = record.getMessage()
            if record.exc_info and self.verbose:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            banner = getattr(record, BANNER, None)
            fancy = self.con.is_terminal
            if banner is not None:
                title, parts = banner
                if fancy:
                    text = Text.assemble((stamp + " ", "dim"), ("▸ ", "cyan"), (title, "bold cyan"),
                                         (("  " + " · ".join(parts)) if parts else "", "cyan"))
                else:
                    text = Text(f"{stamp} == {title}" + (f": {', '.join(parts)}" if parts else ""))
            else:
                level = {logging.WARNING: ("warning: ", "yellow"), logging.ERROR: ("error: ", "bold red"),
                         logging.CRITICAL: ("error: ", "bold red")}.get(record.levelno, ("", ""))
                if record.levelno == logging.DEBUG:
                    level = ("debug: ", "dim")
                text = Text.assemble((stamp + " ", "dim"), level, (message, level[1] if level[0] else ""))
                if not fancy:
                    text = Text(f"{stamp} {level[0]}{message}")
            self.con.print(text, soft_wrap=True, highlight=False)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


class _LogFile(logging.FileHandler):
    """The command's log file. A write that fails (a full disk, a dead mount) never retries and never loops:
    the first failure prints one line on the real stderr (``err``) and the handler goes quiet; the terminal
    keeps getting coea's lines."""

    def __init__(self, path: Path, err) -> None:
        super().__init__(path, encoding="utf-8")
        self.err = err
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def flush(self) -> None:
        if not self.broken:
            try:
                super().flush()
            except Exception:  # noqa: BLE001 - a failed flush is a failed write
                self.handleError(None)

    def handleError(self, record: logging.LogRecord | None) -> None:  # noqa: N802 - logging's name
        if self.broken:
            return
        self.broken = True
        problem = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            self.err.write(f"coea: log file {self.baseFilename} cannot be written ({problem}); logging to the "
                           "terminal only\n")
            self.err.flush()
        with contextlib.suppress(Exception):  # what the stream still buffers goes to /dev/null, not to a retry
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            super().close()


class Session:
    """The console and the log file of one command (module docstring). A context manager; one per command."""

    def __init__(self, command: str, *, verbose: bool, argv: list[str]) -> None:
        self.command = command
        self.verbose = verbose
        self.argv = argv
        self.started = time.monotonic()
        self.log_path: Path | None = None
        self._file: _LogFile | None = None
        self._saved: dict[str, Any] = {}

    # -- lifecycle
    def __enter__(self) -> Session:
        from rich.console import Console  # rich loads with the session, not for `coea --help`

        self.out, self.err = sys.stdout, sys.stderr
        self.console = Console(file=self.err, highlight=False, soft_wrap=True)
        shared.set_console(self.console)
        root = logging.getLogger()
        self._saved["root"] = (root.handlers[:], root.level)
        self._saved["levels"] = {n: logging.getLogger(n).level for n in (*OUR_LOGGERS, *QUIET_LOGGERS)}
        self._buffer = MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
        self._buffer.setLevel(logging.DEBUG)
        root.handlers = [_ConsoleHandler(self.console, self.verbose), self._buffer]
        root.setLevel(logging.INFO)
        for name in OUR_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.captureWarnings(True)
        self._saved["transformers"] = self._route_transformers() if self.command in HEAVY else False
        if self.verbose:
            self._captures: list[_Capture] = []
            sys.stdout = self.err  # library prints go to the terminal's stderr; the result still goes to stdout
        else:
            self._captures = [_Capture("print.stdout", self.out), _Capture("print.stderr", self.err)]
            sys.stdout, sys.stderr = self._captures
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for cap in self._captures:
            cap.close_partial()
        if exc is not None and not isinstance(exc, (SystemExit, KeyboardInterrupt, ConfigError)):
            logging.getLogger("coea.cli").debug("coea %s failed", self.command, exc_info=(exc_type, exc, tb))
        elif exc is None:
            logging.getLogger("coea.cli").debug("coea %s finished in %.1f s", self.command,
                                                time.monotonic() - self.started)
        sys.stdout, sys.stderr = self.out, self.err
        shared.set_console(None)
        logging.captureWarnings(False)
        root = logging.getLogger()
        handlers, level = self._saved["root"]
        root.handlers, root.level = handlers, level
        for name, lvl in self._saved["levels"].items():
            logging.getLogger(name).setLevel(lvl)
        if self._saved.get("transformers"):
            import transformers.utils.logging as tl

            tl.disable_propagation()
            tl.enable_default_handler()
        if self._file is not None:
            self._file.close()
        elif not self.verbose and exc is None:  # no log file to keep them: say that something was hidden
            hidden = sum(1 for r in self._buffer.buffer if r.levelno >= logging.WARNING
                         and r.name.split(".")[0] not in OUR_LOGGERS)
            if hidden:
                self.console.print(f"coea: {hidden} library warning{'s' if hidden > 1 else ''} hidden; "
                                   "--verbose shows them", style="dim", highlight=False)
        self._buffer.close()

    @staticmethod
    def _route_transformers() -> bool:
        """transformers logs through its own stderr handler; send its records through ours instead."""
        try:
            import transformers.utils.logging as tl
        except ImportError:
            return False
        tl.disable_default_handler()
        tl.enable_propagation()
        return True

    # -- the log file
    def open_log(self, workdir: str | Path, *, create: bool = True) -> Path | None:
        """Start ``WORKDIR/logs/<command>-<time>.log`` (with what was logged so far) and print its path."""
        if self._file is not None:
            return self.log_path
        workdir = Path(workdir)
        if not create and not workdir.is_dir():
            return None
        logs = workdir / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = logs / f"{self.command}-{stamp}.log"
            if path.exists():
                path = logs / f"{self.command}-{stamp}-{os.getpid()}.log"
            handler = _LogFile(path, self.err)
        except OSError as exc:
            logging.getLogger("coea.cli").warning("no log file (%s); the terminal gets everything instead", exc)
            return None
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
        header = logging.makeLogRecord({"name": "coea.cli", "levelno": logging.INFO, "levelname": "INFO",
                                        "msg": "coea %s (pid %d, python %s)",
                                        "args": (" ".join(self.argv), os.getpid(), sys.version.split()[0])})
        handler.handle(header)
        root = logging.getLogger()
        root.removeHandler(self._buffer)  # first: a record logged while flushing must not grow the buffer it drains
        root.addHandler(handler)
        self._buffer.setTarget(handler)
        self._buffer.flush()
        self._file, self.log_path = handler, path
        _link_latest(logs, self.command, path)
        _prune_logs(logs, self.command, LOG_KEEP)
        logging.getLogger("coea.cli").info("log file: %s", path)
        return path

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _link_latest(logs: Path, command: str, path: Path) -> None:
    link = logs / f"{command}-latest.log"
    tmp = logs / f".{command}-latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(path.name)
        os.replace(tmp, link)
    except OSError:
        pass


def _prune_logs(logs: Path, command: str, keep: int) -> None:
    old = sorted(p for p in logs.glob(f"{command}-*.log") if not p.is_symlink() and p.name[len(command) + 1]
                 .isdigit())
    for p in old[:-keep] if keep else []:
        with contextlib.suppress(OSError):
            p.unlink()


_SESSION: Session | None = None


def emit(text: str, end: str = "\n") -> None:
    """Print the command's result on stdout. A closed pipe (``coea config --explain | head``) ends quietly."""
    try:
        print(text, file=_STDOUT, end=end, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no more output; no error at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, _STDOUT.fileno())
        raise SystemExit(0) from None


def _open_log(args: argparse.Namespace) -> None:
    if _SESSION is not None and getattr(args, "workdir", None):
        _SESSION.open_log(args.workdir, create=args.command in CREATES_WORKDIR)


def _add_config_args(p: argparse.ArgumentParser, *, workdir: bool = True) -> None:
    p.add_argument("--config", required=True, help="YAML file under configs/ (e.g. configs/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set encoder.d_model=64 (repeatable)")
    if workdir:
        p.add_argument("--workdir", required=True, help="work directory of this deployment")


def _cfg(args: argparse.Namespace):
    cfg = load_config(args.config, args.overrides)
    _open_log(args)  # only once the config is valid: a refused command leaves the workdir untouched
    return cfg


def _orchestrator_cfg(args: argparse.Namespace):
    """The config of a command that trains; refuses to run as one of several launched processes."""
    size = os.environ.get("WORLD_SIZE", "1")
    if size.isdigit() and int(size) > 1:
        # N orchestrators would race for the workdir lock and run every stage N times.
        raise ConfigError(f"WORLD_SIZE={size}: run `coea {args.command}` as one plain process, not under a "
                          "launcher; set cycle.num_processes and it launches its GPU workers itself (docs/gpu.md)")
    return _cfg(args)


# ------------------------------------------------------------------------------------------------- commands


def cmd_config(args: argparse.Namespace) -> int:
    if args.explain:
        emit("\n".join(explain()))
        return 0
    import yaml

    emit(yaml.safe_dump(_cfg(args).to_dict(), sort_keys=False), end="")
    return 0


def _until(args: argparse.Namespace) -> int | None:
    """``--until`` as unix seconds (a configuration error, exit 2, when it is neither form)."""
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.clock import parse_until

    try:
        return parse_until(getattr(args, "until", None))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_dsie(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.cycle import run_dsie_stage

    result = run_dsie_stage(_orchestrator_cfg(args), Path(args.workdir), until=_until(args))
    show_result(args, result)
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.bootstrap import run_bootstrap

    result = run_bootstrap(_orchestrator_cfg(args), Path(args.workdir), until=_until(args))
    show_result(args, result)
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.cycle import run_cycle

    cfg = _orchestrator_cfg(args)
    _retry(args, Path(args.workdir))
    _operator_requests(args, Path(args.workdir))
    result = run_cycle(cfg, Path(args.workdir), until=_until(args))
    if result.status == "nothing_new":
        log.info("nothing new: %s; round %s stays the newest round", result.reason, result.round)
    show_result(args, result)
    code = EXIT_OK if result.status == "nothing_new" else _exit_code_of(result)
    return _gap_exit(cfg, Path(args.workdir), code)


def _operator_requests(args: argparse.Namespace, workdir: Path) -> None:
    """--skip-day / --reconsume: recorded in state.json under the lock, then the cycle runs as usual."""
    if not (getattr(args, "skip_day", None) or getattr(args, "reconsume", None)):
        return
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.clock import request_reconsume, skip_day
    from loops.state import workdir_lock

    try:
        with workdir_lock(workdir):
            for day in args.skip_day or []:
                skip_day(workdir, day, command=" ".join(sys.argv[1:]))
            if args.reconsume:
                request_reconsume(workdir, list(args.reconsume))
                log.warning("--reconsume: %s will be read again by the next round (events already consumed are "
                            "not counted twice)", ", ".join(args.reconsume))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _gap_exit(cfg, workdir: Path, code: int) -> int:
    """``code``, or exit 8 when the live log's gap is older than cycle.max_gap_days (one line on stderr)."""
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.clock import read_clock

    view = (read_clock(workdir) or {}).get("log") if workdir.is_dir() else None
    if not view or not view.get("gap_day") or view["gap_age_days"] <= cfg.cycle.max_gap_days:
        return code
    what = "has no event" if view.get("source") == "events.parquet" else "is not complete (no partition or no _SUCCESS)"
    line = (f"coea: {cfg.data.path}: day {view['gap_day']} {what} and {len(view['days_waiting'])} later day(s) wait "
            f"behind it, through {view['newest_complete_day']} ({view['gap_age_days']} days > cycle.max_gap_days "
            f"{cfg.cycle.max_gap_days}); training has stalled at {view['watermark_utc']}. Write the day (a "
            f"marker-only partition for a day without events) or declare it empty: coea cycle --skip-day "
            f"{view['gap_day']}")
    log.debug("%s", line)  # the log file
    print(line, file=_SESSION.err if _SESSION is not None else sys.stderr, flush=True)  # the real stderr, for cron
    return worst([code, EXIT_GAP])


def cmd_rounds(args: argparse.Namespace) -> int:
    """N cycles back to back; exits with the worst cycle's code and stops where going on makes no sense."""
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.cycle import run_cycle

    cfg = _orchestrator_cfg(args)
    until = _until(args)
    _retry(args, Path(args.workdir))
    _operator_requests(args, Path(args.workdir))
    codes = []
    for i in range(args.n):
        try:
            result = run_cycle(cfg, Path(args.workdir), until=until)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line per failed cycle, then decide whether to go on
            code = exit_code_for(exc)
            print(_failure_line(args.command, exc), file=sys.stderr)
            codes.append(code)
            if code in (EXIT_INPUT, EXIT_LOCKED, EXIT_EXHAUSTED, EXIT_DATA, EXIT_GAP):
                log.warning("rounds: stopping after cycle %d/%d (exit %d: %s)", i + 1, args.n, code,
                            EXIT_CODES[code])
                break
            continue
        show_result(args, result, heading=f"cycle {i + 1}/{args.n}")
        codes.append(_exit_code_of(result))
        if result.status == "nothing_new":
            log.info("nothing new: %s; stopping after cycle %d/%d", result.reason, i + 1, args.n)
            codes[-1] = _gap_exit(cfg, Path(args.workdir), codes[-1])
            break
        log.info("cycle %d/%d: round %s %s", i + 1, args.n, result.round, result.status)
    code = worst(codes)
    emit(f"rounds: {len(codes)} of {args.n} cycles ran; exit codes {codes}; exit {code} ({EXIT_CODES[code]})")
    return code


def _exit_code_of(result) -> int:
    """CycleResult.status -> exit code: promoted / nothing_new 0, refused 4."""
    return EXIT_REFUSED if result.status == "refused" else EXIT_OK


def _retry(args: argparse.Namespace, workdir: Path) -> None:
    """--retry: reset the attempt count of the unfinished round; --fresh: also delete its finished stages."""
    if not (args.retry or args.fresh):
        return
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.retention import discard_unfinished
    from loops.state import reset_attempts, workdir_lock

    k = reset_attempts(workdir)
    if k is None:
        log.info("--retry: no unfinished round in %s; running normally", workdir)
        return
    log.info("--retry: round %d's attempt count reset to 0", k)
    if args.fresh:
        with workdir_lock(workdir):
            discard_unfinished(workdir, k)


def cmd_lookup(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.serving import LOOKUP_FOUND, lookup

    if args.user is not None and (args.csid is not None or args.recent is not None):
        raise ConfigError("lookup: --user and --csid/--recent are two different questions; give --user U, or "
                          "--csid X with --recent 'A,B'")
    if args.user is None and args.csid is None:
        raise ConfigError("lookup: give --user U or --csid X --recent 'A,B'")
    recent = [c.strip() for c in (args.recent or "").split(",") if c.strip()]
    answer = lookup(Path(args.workdir), user=args.user, csid=args.csid, recent=recent)
    emit(json.dumps(answer, indent=2))
    return 0 if answer["status"] in LOOKUP_FOUND else EXIT_UNKNOWN


def cmd_rollback(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.serving import rollback

    from loops.status import check_workdir

    _open_log(args)
    before = rollback(check_workdir(Path(args.workdir)), args.to)
    emit(f"round {args.to} is promoted now (was round {before}); the next cycle starts from it")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from loops.status import format_status, workdir_status

    status = workdir_status(Path(args.workdir))
    emit(json.dumps(status, indent=2) if args.json else "\n".join(format_status(status)))
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.groups_report import as_json, load_groups, render_table, write_html

    if args.html and Path(args.html).is_dir():
        raise ConfigError(f"--html {args.html} is a directory; give a file name, e.g. {Path(args.html) / 'groups.html'}")
    if args.max_points < 1:
        raise ConfigError(f"--max-points must be at least 1, got {args.max_points}")
    view = load_groups(Path(args.workdir), args.round)
    if args.json:
        emit(json.dumps(as_json(view), indent=2))
    else:
        import shutil

        emit(render_table(view, width=shutil.get_terminal_size((160, 24)).columns if sys.stdout.isatty() else 160),
             end="")
    if args.html:
        out = write_html(view, Path(args.html), method=args.map, max_points=args.max_points, seed=args.seed)
        log.info("groups: wrote %s (open it in a browser)", out)
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.prompts import render_sample

    emit(render_sample(_cfg(args)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        raise ConfigError("export needs PySpark and Java 17: pip install -e '.[spark]' (docs/spark.md)")
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from spark_jobs.export_kv import export

    _open_log(args)
    emit(json.dumps(export(Path(args.workdir), Path(args.out)), indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.evaluate import run_evaluate, write_train_view

    from coea.workdir import configure_threads

    cfg = _cfg(args)
    configure_threads(cfg.run.num_threads)  # run.num_threads everywhere; eval.num_threads may override torch's
    if args.write_train_view:
        emit(json.dumps(write_train_view(cfg, Path(args.write_train_view)), indent=2, default=str))
        return 0
    if not args.workdir or not args.out:
        raise ConfigError("evaluate: give --workdir W --out DIR (or --write-train-view DIR)")
    emit(json.dumps(run_evaluate(cfg, Path(args.workdir), Path(args.out)), indent=2, default=str))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.simulate.run import parse_list, simulate
    from coea.workdir import configure_threads

    cfg = load_config(args.config, args.overrides)
    seeds = [cfg.sim.validation_seed] if args.validation else None
    arms = parse_list(args.arms) if args.arms else None
    if args.max_days is not None and args.max_days < 1:
        raise ConfigError(f"--max-days: must be >= 1; got {args.max_days}")
    if _SESSION is not None:
        _SESSION.open_log(args.out)
    configure_threads(cfg.run.num_threads)
    result = simulate(cfg, Path(args.out), seeds=seeds, arms=arms, max_days=args.max_days,
                      allow_dirty=args.allow_dirty)
    done = min(result.days_done.values()) if result.days_done else 0
    emit(json.dumps({"out": str(result.out_dir), "seeds": result.seeds, "arms": result.arms,
                     "days_done": done, "complete": result.complete, "rows": result.rows,
                     "wall_s": round(result.wall_s, 1), "results": str(result.out_dir / "results.md")}, indent=2))
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.judge.command import run_command

    summary = run_command(args, open_log=lambda out: _SESSION.open_log(out) if _SESSION is not None else None)
    emit(json.dumps(summary, indent=2))
    return 0


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    extras = [e.strip() for e in (args.extras or "").split(",") if e.strip()]
    result = build_wheelhouse(Path(args.out), python=args.python, platform=args.platform,
                              torch_index=args.torch_index, extras=extras, dry_run=args.dry_run)
    emit("\n".join(result.report()))
    return 0


# ------------------------------------------------------------------------------------------------- results


def show_result(args: argparse.Namespace, result: Any, *, heading: str = "") -> None:
    """Print a command's result on stdout: JSON with ``--json``, else a short summary (coea/summary.py)."""
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.summary import render, result_json

    workdir = Path(args.workdir) if getattr(args, "workdir", None) else None
    log_path = _SESSION.log_path if _SESSION is not None else None
    elapsed = _SESSION.elapsed() if _SESSION is not None else None
    if getattr(args, "json", False):
        emit(json.dumps(result_json(result, workdir, log_path), indent=2, default=str))
        return
    fancy = bool(getattr(_STDOUT, "isatty", lambda: False)())
    lines = render(result, workdir, log_path=log_path, elapsed=elapsed, heading=heading, fancy=fancy)
    if fancy:
        from rich.console import Console

        con = Console(file=_STDOUT, highlight=False, soft_wrap=True)
        for line in lines:
            con.print(line)
    else:
        emit("\n".join(str(line) for line in lines))


def cmd_world(args: argparse.Namespace) -> int:
    # Imported on use, not at the top: keeps `coea --help` and the light commands fast (start-up time).
    from coea.data.world import WorldSpec, write_world

    spec = WorldSpec(**{f.name: getattr(args, f.name) for f in fields(WorldSpec)})
    try:
        spec.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty directory; coea world writes a new log")

    def progress(day: int, clicks: int) -> None:
        log.info("world: day %d/%d complete (%s clicks)", day + 1, spec.days, f"{clicks:,}")

    result = write_world(spec, out, progress=progress)
    summary = {"out": str(result.path), "users": spec.users, "clicks": result.clicks,
               "clicks_per_user": round(result.clicks / spec.users, 1), "days": spec.days,
               "files": result.files, "wall_s": round(result.wall_s, 2)}
    emit(json.dumps(summary) if args.json else
         f"coea world: {summary['clicks']:,} clicks of {spec.users:,} users over {spec.days} days "
         f"({summary['clicks_per_user']} per user) in {summary['files']} files under {out} ({summary['wall_s']} s)")
    return 0


# ------------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show debug lines, library warnings and the trainers' per-step logs here "
                             "(they always go to the log file)")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")

    parser = argparse.ArgumentParser(prog="coea", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, *, result: bool = False, **kwargs: Any) -> argparse.ArgumentParser:
        parents = [common, json_flag] if result else [common]
        return sub.add_parser(name, help=help, description=kwargs.pop("description", help[0].upper() + help[1:]
                                                                        + "."), parents=parents, **kwargs)

    p = add("config", "print the resolved config (or every key with its help)")
    p.add_argument("--config", help="YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--explain", action="store_true", help="list every key, its default and its meaning")
    p.set_defaults(fn=cmd_config)

    until_help = ("watermark: unix seconds (exclusive) or YYYY-MM-DD (through that UTC day); lowers the live "
                  "clock's newest complete day, or ends the replay round there (docs/cycle.md, 'The clock')")
    p = add("dsie", "run the DSIE stage (encoder, RQ-VAE, CSIDs, portraits) into rounds/000/dsie", result=True)
    _add_config_args(p)
    p.add_argument("--until", help=until_help)
    p.set_defaults(fn=cmd_dsie)

    p = add("bootstrap", "round 0: DSIE if missing, Novelty SFT and Relevance reward training", result=True)
    _add_config_args(p)
    p.add_argument("--until", help=until_help)
    p.set_defaults(fn=cmd_bootstrap)

    p = add("cycle", "one co-evolution round (bootstraps first when round 0 is missing)", result=True,
            epilog=_EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_retry_args(p)
    _add_config_args(p)
    p.add_argument("--until", help=until_help)
    _add_live_args(p)
    p.set_defaults(fn=cmd_cycle)

    p = add("rounds", "run N cycles back to back", result=True,
            description="Run N cycles back to back. Exits with the worst cycle's code (0 < 4 < 1 < 8 < 7 < 2 < 3 "
                        "< 5); stops early on exit 2, 3, 5, 7 or 8 and when there is nothing new.",
            epilog=_EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_retry_args(p)
    _add_config_args(p)
    p.add_argument("--until", help=until_help)
    p.add_argument("--n", type=int, required=True, help="number of cycles")
    _add_live_args(p)
    p.set_defaults(fn=cmd_rounds)

    p = add("lookup", "print the KV value serving would return",
            description="Print, as JSON, what serving returns for a user or a (CSID, recent categories) pair and "
                        "what it means: status found | empty (a real key whose C_align is empty) | unknown_user | "
                        "unknown_csid | unknown_category | unknown_key. Exit 0 for found / empty, 6 for unknown_*.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--user", help="user id (an unknown user gets status unknown_user and the default-CSID answer)")
    p.add_argument("--csid", help="group CSID, e.g. 3-14-0-7 (or default)")
    p.add_argument("--recent", help="comma-separated recent categories (with --csid)")
    p.set_defaults(fn=cmd_lookup)

    p = add("rollback", "promote an earlier, still-kept round",
            description="Serve round K again: a kept round that was promoted once (`coea status` lists the rounds "
                        "on offer). The next cycle starts its models from it.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--to", type=int, required=True, help="round to promote")
    p.set_defaults(fn=cmd_rollback)

    p = add("status", "promoted round, every round's state, attempts, lock and disk use", result=True,
            description="What the workdir serves now, every round's state (promoted now / was promoted / refused / "
                        "failed / interrupted / in progress / expired), attempts, the lock holder, disk use per "
                        "round and in total, and the rounds rollback offers. A missing or non-coea workdir exits 2.")
    p.add_argument("--workdir", required=True)
    p.set_defaults(fn=cmd_status)

    p = add("groups", "the promoted round's CSID groups: a table, or an HTML page with a map",
            description="Print the CSID groups the promoted round uses (CSID, size, top categories, portrait, "
                        "representatives); --html also writes a static page with one card per group and a 2-D "
                        "map of the users' long-term representations coloured by group.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--round", type=int, default=None, help="show the groups round K used (default: the promoted round)")
    p.add_argument("--html", metavar="OUT", help="also write a static HTML page to OUT (e.g. groups.html)")
    p.add_argument("--map", choices=["pca", "tsne"], default="pca", help="2-D projection of the map (default pca)")
    p.add_argument("--max-points", type=int, default=5000, help="users drawn on the map at most (a seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the map's sample and projection")
    p.add_argument("--json", action="store_true", help="print the groups as JSON instead of a table")
    p.set_defaults(fn=cmd_groups)

    p = add("prompts", "show every prompt template rendered for a sample user")
    _add_config_args(p, workdir=False)
    p.set_defaults(fn=cmd_prompts)

    p = add("export", "export the promoted round to Parquet tables (Spark; pip install -e '.[spark]')")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(fn=cmd_export)

    p = add("evaluate", "offline evaluation: metrics, baselines, ablations")
    _add_config_args(p, workdir=False)
    p.add_argument("--workdir", help="CoEA workdir, or a benchmark root of seed<S>/<variant>/ workdirs")
    p.add_argument("--out", help="output directory")
    p.add_argument("--write-train-view", metavar="DIR",
                   help="write the split's train events as a Parquet data set to train CoEA on, then stop")
    p.set_defaults(fn=cmd_evaluate)

    p = add("simulate", "closed-loop A/B simulation: every arm on an identical copy of the synthetic world",
            description="Run (or resume) the closed-loop A/B simulation of the sim: section: seeds x days x arms "
                        "on identical world copies; writes OUT/days.jsonl, results.md, days.png, kl.png and one "
                        "offline W&B run per arm (docs/simulate.md). A killed run continues where it stopped.")
    _add_config_args(p, workdir=False)
    p.add_argument("--out", required=True, help="output directory (an existing one is resumed)")
    p.add_argument("--arms", help="comma-separated arms (default sim.arms)")
    p.add_argument("--validation", action="store_true",
                   help="run the validation world seed (sim.validation_seed) only, to choose settings")
    p.add_argument("--max-days", type=int, default=None, metavar="N",
                   help="stop after N A/B days (resume later with a larger N or without it)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run from uncommitted code anyway and mark the results (refused otherwise)")
    p.set_defaults(fn=cmd_simulate)

    p = add("judge", "LLM-as-a-Judge serendipity of served or evaluated lists; calibrate against labels",
            description=JUDGE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_judge_arguments(p)
    p.set_defaults(fn=cmd_judge)

    p = add("wheelhouse", "download every wheel coea needs into DIR for an air-gapped GPU host",
            description="Download, with pip, the wheels of coea's dependencies for the target Python "
                        "and platform (deepspeed as an sdist: it publishes no wheel), torch from the "
                        "CUDA index and coea's own wheel into DIR; write DIR/requirements.txt and "
                        "DIR/MANIFEST.json. Install on the host with: pip install --no-index "
                        "--find-links DIR -r DIR/requirements.txt (docs/gpu.md).")
    p.add_argument("--out", required=True, metavar="DIR", help="wheelhouse folder (created; a rerun resumes)")
    p.add_argument("--python", default=DEFAULT_PYTHON, help=f"the host's Python MAJOR.MINOR (default {DEFAULT_PYTHON})")
    p.add_argument("--platform", default=DEFAULT_PLATFORM,
                   help=f"the host's platform tag (default {DEFAULT_PLATFORM}; legacy tags such as "
                        "manylinux2014_x86_64 work too); wheels for older glibc tags are accepted")
    p.add_argument("--torch-index", default=DEFAULT_TORCH_INDEX, metavar="URL",
                   help=f"index serving torch for the host's CUDA (default {DEFAULT_TORCH_INDEX})")
    p.add_argument("--extras", default="", metavar="A,B", help="coea extras to include, e.g. deepspeed,spark")
    p.add_argument("--dry-run", action="store_true", help="print the pip command lines without running them")
    p.set_defaults(fn=cmd_wheelhouse)

    p = add("world", "write an MTRec-shaped synthetic click log as day partitions", result=True,
            description="Write a synthetic click log of any size in the live-log layout (items.parquet, users.parquet, "
                        "events/date=D/part-C.parquet + _SUCCESS), day by day, user chunk by user chunk, in bounded "
                        "memory (docs/scale.md). Clicks only. Defaults are MTRec's shape: 594 categories, 27,953 "
                        "items, 25 days, ~228 clicks per user.")
    p.add_argument("--users", type=int, required=True, help="users (MTRec: 1,450,381)")
    p.add_argument("--categories", type=int, default=MTREC["categories"], help="categories (default 594)")
    p.add_argument("--days", type=int, default=MTREC["days"], help="days, one partition each (default 25)")
    p.add_argument("--items", type=int, default=MTREC["items"], help="items (default 27,953)")
    p.add_argument("--clicks-per-user", type=float, default=MTREC_CLICKS_PER_USER,
                   help="mean clicks per user over all days (default 228, MTRec's)")
    p.add_argument("--groups", type=int, default=100, help="latent user groups (default 100)")
    p.add_argument("--categories-per-group", type=int, default=8, help="core categories per group (default 8)")
    p.add_argument("--latent-per-user", type=int, default=3, help="latent interests per user (default 3)")
    p.add_argument("--drift", type=float, default=0.3, help="short-term drift probability (default 0.3)")
    p.add_argument("--discover-prob", type=float, default=0.1,
                   help="per-day probability of discovering a latent interest (default 0.1)")
    p.add_argument("--user-features", type=int, default=3, help="sparse user features (default 3)")
    p.add_argument("--chunk-users", type=int, default=50_000,
                   help="users generated at a time: bounds memory (default 50,000)")
    p.add_argument("--seed", type=int, default=0, help="seed (with --chunk-users, fixes the whole log)")
    p.add_argument("--first-day", default="2024-01-01", help="UTC day of the first partition (YYYY-MM-DD)")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.set_defaults(fn=cmd_world)
    return parser


@contextlib.contextmanager
def _session(args: argparse.Namespace, argv: list[str]) -> Iterator[Session]:
    global _SESSION
    with Session(args.command, verbose=getattr(args, "verbose", False), argv=argv) as session:
        _SESSION = session
        try:
            yield session
        finally:
            _SESSION = None


_EXIT_EPILOG = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


def _add_live_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-day", action="append", metavar="YYYY-MM-DD",
                   help="live log: declare a missing day empty on purpose so the clock moves past it (recorded in "
                        "state.json); repeatable")
    p.add_argument("--reconsume", action="append", metavar="date=YYYY-MM-DD[/FILE]",
                   help="live log: read a consumed file (or every file of a partition) again after it changed; "
                        "events already consumed are not counted twice (exit 7 names such files); repeatable")


def _add_retry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retry", action="store_true",
                   help="reset the attempt count of a round that failed cycle.max_attempts times (exit 5) and try "
                        "it again; its finished stages are reused")
    p.add_argument("--fresh", action="store_true",
                   help="with --retry (implied): also delete the unfinished round's finished stages and staged KV "
                        "version, so it starts over on the current data and config (after a data fix)")


def _failure_line(command: str, exc: BaseException) -> str:
    """One line for cron: the error, and where its full traceback is when the round wrote one."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, AttemptsExhaustedError):
        return f"coea: {command} stopped: {text}"
    if isinstance(exc, (WorkdirError, LiveDataError)):
        return f"coea: {command}: {text}"
    where = getattr(exc, "coea_failure_log", None)
    return f"coea: {command} failed: {type(exc).__name__}: {text}" + (f" (traceback: {where})" if where else "")


def main(argv: list[str] | None = None) -> int:
    if not {"-v", "--verbose"} & set(argv if argv is not None else sys.argv[1:]):
        for key, value in QUIET_ENV.items():  # before libraries are imported: tqdm reads these at import time
            os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    global _STDOUT
    _STDOUT = sys.stdout
    try:
        with _session(args, list(argv if argv is not None else sys.argv[1:])):
            return args.fn(args)
    except ConfigError as exc:
        print(f"coea: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coea: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for cron; the traceback is in the round's failure log (and the debug log)
        log.debug("failure", exc_info=True)
        print(_failure_line(args.command, exc), file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
