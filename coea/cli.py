"""The `coea` command line. Thin: parse, load the config, call one entry function, map errors to exit codes.

Exit codes: 0 success; 1 a stage failed (one-line reason on stderr, details in the log); 2 configuration or
usage error (one line naming the problem); 3 another cycle holds the workdir lock; 4 guardrail refused promotion.
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

    result = run_cycle(_orchestrator_cfg(args), Path(args.workdir))
    emit(json.dumps(_summary(result), indent=2, default=str))
    return 0 if result.promoted else 4


def cmd_rounds(args: argparse.Namespace) -> int:
    from loops.cycle import run_cycle

    cfg = _orchestrator_cfg(args)
    for i in range(args.n):
        result = run_cycle(cfg, Path(args.workdir))
        log.info("cycle %d/%d: round %s promoted=%s", i + 1, args.n, result.round, result.promoted)
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    from loops.cycle import lookup

    if args.user is None and args.csid is None:
        raise ConfigError("lookup: give --user U or --csid X --recent 'A,B'")
    recent = [c.strip() for c in (args.recent or "").split(",") if c.strip()]
    emit(json.dumps(lookup(Path(args.workdir), user=args.user, csid=args.csid, recent=recent), indent=2))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from loops.cycle import rollback

    rollback(Path(args.workdir), args.to)
    emit(f"promoted round {args.to}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from coea.rounds import read_state

    emit(json.dumps(read_state(Path(args.workdir)), indent=2))
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
    from coea.evaluate import run_evaluate, write_train_view

    if args.write_train_view:
        emit(json.dumps(write_train_view(_cfg(args), Path(args.write_train_view)), indent=2, default=str))
        return 0
    if not args.workdir or not args.out:
        raise ConfigError("evaluate: give --workdir W --out DIR (or --write-train-view DIR)")
    emit(json.dumps(run_evaluate(_cfg(args), Path(args.workdir), Path(args.out)), indent=2, default=str))
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

    p = sub.add_parser("cycle", help="one co-evolution round (bootstraps first when round 0 is missing)")
    _add_config_args(p)
    p.set_defaults(fn=cmd_cycle)

    p = sub.add_parser("rounds", help="run N cycles back to back")
    _add_config_args(p)
    p.add_argument("--n", type=int, required=True, help="number of cycles")
    p.set_defaults(fn=cmd_rounds)

    p = sub.add_parser("lookup", help="print the KV value serving would return")
    p.add_argument("--workdir", required=True)
    p.add_argument("--user", help="user id (unknown users fall back to the default CSID)")
    p.add_argument("--csid", help="group CSID, e.g. 3-14-0-7")
    p.add_argument("--recent", help="comma-separated recent categories (with --csid)")
    p.set_defaults(fn=cmd_lookup)

    p = sub.add_parser("rollback", help="promote an earlier, still-kept round")
    p.add_argument("--workdir", required=True)
    p.add_argument("--to", type=int, required=True, help="round to promote")
    p.set_defaults(fn=cmd_rollback)

    p = sub.add_parser("status", help="promoted round, history and guardrail decisions")
    p.add_argument("--workdir", required=True)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("prompts", help="show every prompt template rendered for a sample user")
    _add_config_args(p, workdir=False)
    p.set_defaults(fn=cmd_prompts)

    p = sub.add_parser("export", help="export the promoted round to Parquet tables (Spark)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("evaluate", help="offline evaluation: metrics, baselines, ablations")
    _add_config_args(p, workdir=False)
    p.add_argument("--workdir", help="CoEA workdir, or a benchmark root of seed<S>/<variant>/ workdirs")
    p.add_argument("--out", help="output directory")
    p.add_argument("--write-train-view", metavar="DIR",
                   help="write the split's train events as a Parquet data set to train CoEA on, then stop")
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
    except Exception as exc:  # one line for cron; the traceback goes to the debug log
        from coea.errors import exit_code_for

        log.debug("failure", exc_info=True)
        print(f"coea: {args.command} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
