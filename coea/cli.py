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

`coea rounds --n N` exits with the worst code of its cycles (0 < 4 < 1 < 2 < 3 < 5) and stops early on 2, 3, 5
and on "nothing new".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from coea.config import ConfigError, explain, load_config
from coea.errors import EXIT_CODES, EXIT_OK, EXIT_REFUSED

log = logging.getLogger("coea")
_STDOUT = sys.stdout  # the command's result goes here; everything libraries print goes to stderr


def emit(text: str, end: str = "\n") -> None:
    print(text, file=_STDOUT, end=end, flush=True)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(rich_tracebacks=False, show_path=False, console=_stderr_console())],
        force=True,
    )
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "lightning", "lightning.pytorch",
                  "pytorch_lightning", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _add_config_args(p: argparse.ArgumentParser, *, workdir: bool = True) -> None:
    p.add_argument("--config", required=True, help="YAML file under configs/ (e.g. configs/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set encoder.d_model=64 (repeatable)")
    if workdir:
        p.add_argument("--workdir", required=True, help="work directory of this deployment")


def _cfg(args: argparse.Namespace):
    return load_config(args.config, args.overrides)


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


def cmd_dsie(args: argparse.Namespace) -> int:
    from loops.cycle import run_dsie_stage

    result = run_dsie_stage(_orchestrator_cfg(args), Path(args.workdir))
    emit(json.dumps(result, indent=2))
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from loops.bootstrap import run_bootstrap

    result = run_bootstrap(_orchestrator_cfg(args), Path(args.workdir))
    emit(json.dumps(_summary(result), indent=2, default=str))
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    from loops.cycle import run_cycle

    cfg = _orchestrator_cfg(args)
    _retry(args, Path(args.workdir))
    result = run_cycle(cfg, Path(args.workdir))
    if result.status == "nothing_new":
        emit(f"nothing new: {result.reason}; round {result.round} stays the newest round")
        return EXIT_OK
    emit(json.dumps(_summary(result), indent=2, default=str))
    return _exit_code_of(result)


def cmd_rounds(args: argparse.Namespace) -> int:
    """N cycles back to back; exits with the worst cycle's code and stops where going on makes no sense."""
    from coea.errors import EXIT_EXHAUSTED, EXIT_INPUT, EXIT_LOCKED, exit_code_for, worst
    from loops.cycle import run_cycle

    cfg = _orchestrator_cfg(args)
    _retry(args, Path(args.workdir))
    codes = []
    for i in range(args.n):
        try:
            result = run_cycle(cfg, Path(args.workdir))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line per failed cycle, then decide whether to go on
            code = exit_code_for(exc)
            print(_failure_line(args.command, exc), file=sys.stderr)
            codes.append(code)
            if code in (EXIT_INPUT, EXIT_LOCKED, EXIT_EXHAUSTED):
                log.warning("rounds: stopping after cycle %d/%d (exit %d: %s)", i + 1, args.n, code,
                            EXIT_CODES[code])
                break
            continue
        codes.append(_exit_code_of(result))
        if result.status == "nothing_new":
            emit(f"nothing new: {result.reason}; stopping after cycle {i + 1}/{args.n}")
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
    from loops.cycle import lookup

    if args.user is None and args.csid is None:
        raise ConfigError("lookup: give --user U or --csid X --recent 'A,B'")
    recent = [c.strip() for c in (args.recent or "").split(",") if c.strip()]
    emit(json.dumps(lookup(Path(args.workdir), user=args.user, csid=args.csid, recent=recent), indent=2))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from loops.cycle import rollback
    from loops.status import check_workdir

    before = rollback(check_workdir(Path(args.workdir)), args.to)
    emit(f"round {args.to} is promoted now (was round {before}); the next cycle starts from it")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from loops.status import format_status, workdir_status

    status = workdir_status(Path(args.workdir))
    emit(json.dumps(status, indent=2) if args.json else "\n".join(format_status(status)))
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from coea.prompts import render_sample

    emit(render_sample(_cfg(args)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from spark_jobs.export_kv import export

    emit(json.dumps(export(Path(args.workdir), Path(args.out)), indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from coea.evaluate import run_evaluate
    from coea.workdir import configure_threads

    cfg = _cfg(args)
    configure_threads(cfg.run.num_threads)  # run.num_threads everywhere; eval.num_threads may override torch's
    emit(json.dumps(run_evaluate(cfg, Path(args.workdir), Path(args.out)), indent=2, default=str))
    return 0


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    from coea.wheelhouse import build_wheelhouse

    extras = [e.strip() for e in (args.extras or "").split(",") if e.strip()]
    result = build_wheelhouse(Path(args.out), python=args.python, platform=args.platform,
                              torch_index=args.torch_index, extras=extras, dry_run=args.dry_run)
    emit("\n".join(result.report()))
    return 0


def _summary(result) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    return dict(result) if isinstance(result, dict) else {"result": str(result)}


# ------------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coea", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the resolved config (or every key with its help)")
    p.add_argument("--config", help="YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--explain", action="store_true", help="list every key, its default and its meaning")
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("dsie", help="run the DSIE stage (encoder, RQ-VAE, CSIDs, portraits) into rounds/000/dsie")
    _add_config_args(p)
    p.set_defaults(fn=cmd_dsie)

    p = sub.add_parser("bootstrap", help="round 0: DSIE if missing, Novelty SFT and Relevance reward training")
    _add_config_args(p)
    p.set_defaults(fn=cmd_bootstrap)

    p = sub.add_parser("cycle", help="one co-evolution round (bootstraps first when round 0 is missing)",
                       epilog=_EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    _add_retry_args(p)
    p.set_defaults(fn=cmd_cycle)

    p = sub.add_parser("rounds", help="run N cycles back to back",
                       description="Run N cycles back to back. Exits with the worst cycle's code (0 < 4 < 1 < 2 < "
                                   "3 < 5); stops early on exit 2, 3 or 5 and when there is nothing new.",
                       epilog=_EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--n", type=int, required=True, help="number of cycles")
    _add_retry_args(p)
    p.set_defaults(fn=cmd_rounds)

    p = sub.add_parser("lookup", help="print the KV value serving would return")
    p.add_argument("--workdir", required=True)
    p.add_argument("--user", help="user id (unknown users fall back to the default CSID)")
    p.add_argument("--csid", help="group CSID, e.g. 3-14-0-7")
    p.add_argument("--recent", help="comma-separated recent categories (with --csid)")
    p.set_defaults(fn=cmd_lookup)

    p = sub.add_parser("rollback", help="promote an earlier, still-kept round",
                       description="Serve round K again: a kept round that was promoted once (`coea status` lists "
                                   "the rounds on offer). The next cycle starts its models from it.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--to", type=int, required=True, help="round to promote")
    p.set_defaults(fn=cmd_rollback)

    p = sub.add_parser("status", help="promoted round, every round's state, attempts, lock and disk use",
                       description="What the workdir serves now, every round's state (promoted now / was "
                                   "promoted / refused / failed / interrupted / in progress / expired), attempts, "
                                   "the lock holder, disk use per round and in total, and the rounds rollback "
                                   "offers. A missing or non-coea workdir exits 2.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--json", action="store_true", help="one JSON document for scripts instead of the text form")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("prompts", help="show every prompt template rendered for a sample user")
    _add_config_args(p, workdir=False)
    p.set_defaults(fn=cmd_prompts)

    p = sub.add_parser("export", help="export the promoted round to Parquet tables (Spark)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("evaluate", help="offline evaluation: metrics, baselines, ablations")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(fn=cmd_evaluate)

    from coea.wheelhouse import DEFAULT_PLATFORM, DEFAULT_PYTHON, DEFAULT_TORCH_INDEX

    p = sub.add_parser("wheelhouse", help="download every wheel coea needs into DIR for an air-gapped GPU host",
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
    return parser


_EXIT_EPILOG = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


def _add_retry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retry", action="store_true",
                   help="reset the attempt count of a round that failed cycle.max_attempts times (exit 5) and try "
                        "it again; its finished stages are reused")
    p.add_argument("--fresh", action="store_true",
                   help="with --retry (implied): also delete the unfinished round's finished stages and staged KV "
                        "version, so it starts over on the current data and config (after a data fix)")


def _failure_line(command: str, exc: BaseException) -> str:
    """One line for cron: the error, and where its full traceback is when the round wrote one."""
    from coea.errors import AttemptsExhaustedError, WorkdirError

    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, AttemptsExhaustedError):
        return f"coea: {command} stopped: {text}"
    if isinstance(exc, WorkdirError):
        return f"coea: {command}: {text}"
    where = getattr(exc, "coea_failure_log", None)
    return f"coea: {command} failed: {type(exc).__name__}: {text}" + (f" (traceback: {where})" if where else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    global _STDOUT
    _STDOUT = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return args.fn(args)
    except ConfigError as exc:
        print(f"coea: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coea: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for cron; the traceback is in the round's failure log (and the debug log)
        from coea.errors import exit_code_for

        log.debug("failure", exc_info=True)
        print(_failure_line(args.command, exc), file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
