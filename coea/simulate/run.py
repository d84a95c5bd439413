"""``simulate(cfg, out_dir)``: the closed-loop A/B test, seeds x days x arms, resumable (docs/simulate.md).

Per world seed:

1. ``sim.warmup_days`` organic-only days, played once and written as the shared warm-up log
   (``seed<S>/warmup``); every arm starts from it (its log is a copy, its policy is primed with it).
2. When an LLM arm runs: round 0 bootstraps once on the warm-up log (``coea_arm.bootstrap_round0``), and each
   LLM arm starts from a copy of it (``coea_arm.make_coea_arm``).
3. Each A/B day, for each arm: ``fill`` -> the world plays the day's sessions -> the events are appended to the
   arm's log as that day's partition -> ``observe`` (for CoEA: that day's ``coea cycle``) -> one row of
   ``days.jsonl``.

Layout of ``OUT``::

    config.yaml                 the resolved config
    days.jsonl                  one row per (seed, arm, day): the metrics of coea/simulate/metrics.py
    seed<S>/world.json          the world's ground truth (core and latent interests per user)
    seed<S>/warmup/             the shared warm-up log; warmup.pkl: the world and metric state after it
    seed<S>/round0/             the LLM arms' shared round 0
    seed<S>/<arm>/log/          the arm's own log (warm-up copy + its days): what its policy learns from
    seed<S>/<arm>/state.pkl     after each finished day: world state, metric state, policy state, recent clicks
    seed<S>/<arm>/pending.pkl   a played day whose observe has not finished yet (resumed from here)
    seed<S>/<arm>/policy/       the LLM arms' own directory (workdir, KV tables)
    seed<S>/<arm>.t<T>/         the same for training seed T > 0 (``sim.train_seeds``); round0.t<T>/ its round 0

**Training seeds.** Each of ``sim.train_seeds`` is a separate run of every arm on the same world copy: the LLM
arms train with ``run.seed + T`` (their own round 0 included), the random arms draw from their own stream. Seed 0
is the plain run (its directories and rows are those of a run without training seeds). Rows carry
``train_seed``; the report averages over them per world and states the two variance components.

**Resume.** A killed run continues where it stopped: each (seed, arm) continues after its last finished day;
a day that was played but not observed is taken from ``pending.pkl`` (same events, its partition written once)
and observed again; rows of ``days.jsonl`` are de-duplicated and those past an arm's last finished day dropped.
Every random draw is keyed by (seed, day, stream), so a resumed run writes the same rows as an uninterrupted
one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from coea.config import SIM_LLM_ARMS, Config, ConfigError, load_config
from coea.console import banner, progress
from coea.data.partitions import (
    EPOCH, EVENTS_DIR, ITEMS_FILE, PARTITION_KEY, SUCCESS, USERS_FILE, write_day, write_table,
)
from coea.simulate.coea_arm import bootstrap_round0, make_coea_arm
from coea.simulate.days import DAYS_FILE, DaysLog, jsonable
from coea.simulate.metrics import ArmMetrics
from coea.simulate.policies import NON_LLM_ARMS, Policy, make_policy
from coea.simulate.provenance import check_provenance, record
from coea.simulate.report import write_report
from coea.simulate.world import World, WorldState, day_date, day_end

log = logging.getLogger("coea.simulate")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class SimResult:
    """What :func:`simulate` did: where, which seeds and arms, how many days each finished, wall time."""

    out_dir: Path
    seeds: list[int]
    arms: list[str]
    days_done: dict[str, int] = field(default_factory=dict)  # "seed/arm" -> A/B days finished
    rows: int = 0
    wall_s: float = 0.0
    complete: bool = False


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def coea_config_for(cfg: Config) -> Config:
    """The LLM arms' coea Config: ``sim.coea_config`` (relative: the working directory, then the repo)."""
    path = Path(cfg.sim.coea_config)
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    if not path.is_file():
        raise ConfigError(f"sim.coea_config: file not found: {cfg.sim.coea_config}")
    overrides = [t.strip() for t in cfg.sim.coea_set.split(";") if t.strip()]
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raise ConfigError(f"sim.coea_config / sim.coea_set: {exc}") from None


# ------------------------------------------------------------------------------------------------ files


def _atomic_pickle(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _load_pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _write_partition(log_dir: Path, date, events: pd.DataFrame) -> None:
    """Write the day's partition once: a rerun after a crash finishes a half-written day instead of doubling it."""
    part = log_dir / EVENTS_DIR / f"{PARTITION_KEY}={date.isoformat()}"
    name = f"part-{date.isoformat()}.parquet"
    if (part / SUCCESS).exists():
        return
    if (part / name).exists():  # data file renamed in, marker not yet written
        (part / SUCCESS).touch()
        return
    write_day(log_dir, date, events, name=name)


# ------------------------------------------------------------------------------------------------ warm-up


@dataclass
class Warmup:
    """The shared start of every arm of a seed: the warm-up log, the world and metric state after it."""

    log_dir: Path
    state: WorldState
    metrics: dict
    recent: list[list[str]]
    events: pd.DataFrame


def run_warmup(world: World, seed_dir: Path) -> Warmup:
    """Play the organic-only warm-up days once per seed (reused when ``warmup.pkl`` exists)."""
    cfg = world.cfg
    log_dir = seed_dir / "warmup"
    done = seed_dir / "warmup.pkl"
    if done.exists():
        d = _load_pickle(done)
        return Warmup(log_dir, WorldState.from_state_dict(d["state"]), d["metrics"], d["recent"], d["events"])
    if log_dir.exists():
        shutil.rmtree(log_dir)
    write_table(log_dir, ITEMS_FILE, world.items)
    write_table(log_dir, USERS_FILE, world.users)
    state = world.initial_state()
    metrics = ArmMetrics(cfg, world.names, world.long_tail(), world.kind == 2, world.latent_kind)
    recent: list[list[str]] = [[] for _ in world.user_ids]
    frames = []
    for day in range(cfg.warmup_days):
        out, state = world.step(state, day, None)
        metrics.absorb(day, out)
        _extend_recent(recent, out, world.names)
        _write_partition(log_dir, day_date(cfg, day), out.events)
        frames.append(out.events)
    events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    with open(seed_dir / "knowledge.jsonl", "w") as f:  # the world-knowledge corpus (docs/simulate.md)
        f.writelines(json.dumps(d) + "\n" for d in world.knowledge_corpus())
    (seed_dir / "world.json").write_text(json.dumps({
        "seed": world.seed, "n_users": cfg.n_users, "n_categories": cfg.n_categories,
        "warmup_discovery_rate": float(state.discovered.mean()) if state.discovered.size else None,
        "mate_share": world.mate_share(),
        "ground_truth": world.ground_truth().to_dict(orient="records"),
    }, default=jsonable))
    _atomic_pickle(done, {"state": state.state_dict(), "metrics": metrics.state_dict(), "recent": recent,
                          "events": events})
    return Warmup(log_dir, state, metrics.state_dict(), recent, events)


def _extend_recent(recent: list[list[str]], out, names: list[str]) -> None:
    for u, c in zip(out.user[out.click].tolist(), out.category[out.click].tolist()):
        recent[u].append(names[c])


# ------------------------------------------------------------------------------------------------ one arm


class ArmRun:
    """One (seed, arm): its policy, world state, metric state and log; :meth:`run_day` plays one A/B day."""

    def __init__(self, name: str, world: World, seed_dir: Path, warm: Warmup, policy_factory,
                 train_seed: int = 0) -> None:
        self.name, self.world, self.cfg, self.train_seed = name, world, world.cfg, int(train_seed)
        self.dir = seed_dir / run_dir_name(name, self.train_seed)
        if name in SIM_LLM_ARMS:
            _check_arm_settings(self.dir, self.cfg)
        self.log_dir = self.dir / "log"
        self.state_path, self.pending_path = self.dir / "state.pkl", self.dir / "pending.pkl"
        self.metrics = ArmMetrics(self.cfg, world.names, world.long_tail(), world.kind == 2, world.latent_kind)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            d = _load_pickle(self.state_path)
            self.done_day = int(d["done_day"])
            self.state = WorldState.from_state_dict(d["world"])
            self.metrics.load_state_dict(d["metrics"])
            self.recent = d["recent"]
            self.policy: Policy = policy_factory(self.dir / "policy", None)
            self.policy.load_state_dict(d["policy"])
        else:
            if self.log_dir.exists():
                shutil.rmtree(self.log_dir)
            shutil.copytree(warm.log_dir, self.log_dir)
            self.done_day = self.cfg.warmup_days - 1
            self.state = warm.state.copy()
            self.metrics.load_state_dict(warm.metrics)
            self.recent = [list(r) for r in warm.recent]
            self.policy = policy_factory(self.dir / "policy", warm.events)
            self._save()

    def _save(self) -> None:
        _atomic_pickle(self.state_path, {"done_day": self.done_day, "world": self.state.state_dict(),
                                         "metrics": self.metrics.state_dict(), "recent": self.recent,
                                         "policy": self.policy.state_dict()})

    def run_day(self, day: int, days: DaysLog) -> dict:
        """Play, log, observe and record A/B day ``day``; returns its row."""
        cfg, world = self.cfg, self.world
        pending = _load_pickle(self.pending_path) if self.pending_path.exists() else None
        if pending is not None and pending["day"] == day:
            state = WorldState.from_state_dict(pending["world"])
            self.metrics.load_state_dict(pending["metrics"])
            recent, row, events = pending["recent"], pending["row"], pending["events"]
        else:
            t0 = time.perf_counter()
            lists = self.policy.fill(policy_day(cfg, day), list(world.user_ids), [list(r) for r in self.recent],
                                     cfg.slots)
            fill_s = time.perf_counter() - t0
            if self.name != "exploitation" and 0 < cfg.explore_slots < cfg.slots:
                lists = with_base_ranking(lists, base_ranking(world, self.recent), cfg.explore_slots, cfg.slots)
            served = _served_ids(world, lists, cfg.slots, self.name)
            out, state = world.step(self.state, day, served)
            row = {"seed": world.seed, "arm": self.name, "train_seed": self.train_seed,
                   "day": day - cfg.warmup_days, "sim_day": day,
                   "date": day_date(cfg, day).isoformat(),
                   **self.metrics.update(day, out, state, served), "fill_s": fill_s}
            recent = [list(r) for r in self.recent]
            _extend_recent(recent, out, world.names)
            events = out.events
            _atomic_pickle(self.pending_path, {"day": day, "world": state.state_dict(),
                                               "metrics": self.metrics.state_dict(), "recent": recent, "row": row,
                                               "events": events})
        _write_partition(self.log_dir, day_date(cfg, day), events)
        t0 = time.perf_counter()
        self.policy.observe(policy_day(cfg, day), self.log_dir, events)
        row = {**row, "observe_s": time.perf_counter() - t0, **policy_figures(self.policy, policy_day(cfg, day))}
        days.append(row)
        self.state, self.recent, self.done_day = state, recent, day
        self._save()
        self.pending_path.unlink(missing_ok=True)
        return row


def run_dir_name(arm: str, train_seed: int) -> str:
    """An arm's directory under ``seed<S>/``: ``<arm>`` for training seed 0, ``<arm>.t<T>`` otherwise."""
    return arm if train_seed == 0 else f"{arm}.t{train_seed}"


def parse_run_dir(name: str) -> tuple[str, int]:
    """Inverse of :func:`run_dir_name`.

    >>> parse_run_dir("coea.t2"), parse_run_dir("ucb")
    (('coea', 2), ('ucb', 0))
    """
    arm, _, t = name.rpartition(".t")
    return (arm, int(t)) if arm and t.isdigit() else (name, 0)


def train_seeds_of(sim, seed: int) -> list[int]:
    """The training seeds run on world ``seed``: all of ``sim.train_seeds`` on the worlds of
    ``sim.train_seed_worlds`` (empty: every world), else only the first."""
    ts = [int(t) for t in parse_list(sim.train_seeds)]
    worlds = [int(w) for w in parse_list(sim.train_seed_worlds)]
    return ts if not worlds or seed in worlds else ts[:1]


def policy_seed(world_seed: int, train_seed: int) -> int:
    """A non-LLM policy's seed: the world's for training seed 0 (the plain run), a distinct one otherwise."""
    return int(world_seed) if train_seed == 0 else int(world_seed) + 1_000_003 * int(train_seed)


def base_ranking(world: World, recent: list[list[str]]) -> list[list[str]]:
    """Each user's base ranking (what the exploitation arm serves): its clicked categories, most clicked first
    (ties by the popularity prior), then the categories most clicked by everyone (ties by the prior)."""
    names, index = world.names, world.catalogue.index
    C = len(names)
    prior_rank = np.empty(C, dtype=np.int64)
    prior_rank[np.lexsort((np.arange(C), -world.popularity))] = np.arange(C)
    counts = np.zeros((len(recent), C), dtype=np.int64)
    for u, cats in enumerate(recent):
        for c in cats:
            counts[u, index[c]] += 1
    overall = np.lexsort((prior_rank, -counts.sum(axis=0)))
    out = []
    for u in range(len(recent)):
        own = [int(c) for c in np.lexsort((prior_rank, -counts[u])) if counts[u, c] > 0]
        seen = set(own)
        out.append([names[c] for c in own + [int(c) for c in overall if c not in seen]])
    return out


def with_base_ranking(lists: list[list[str]], base: list[list[str]], explore: int, slots: int) -> list[list[str]]:
    """The arm's first ``explore`` categories, then the user's base ranking (without repeats) up to ``slots``.

    >>> with_base_ranking([["x", "y", "z"]], [["a", "x", "b"]], 1, 3)
    [['x', 'a', 'b']]
    """
    out = []
    for lst, b in zip(lists, base):
        head = list(dict.fromkeys(lst))[:explore]
        out.append((head + [c for c in b if c not in set(head)])[:slots])
    return out


def policy_day(cfg, day: int) -> int:
    """The ``day`` a policy is told: the UTC day number since 1970-01-01 of simulation day ``day``, so that the day's
    partition is ``date=1970-01-01 + day`` and a cycle after it runs with ``until = (day + 1) * 86400``."""
    return (day_date(cfg, day) - EPOCH).days


def policy_figures(policy, day: int) -> dict:
    """Numeric figures a policy reports for ``day`` (the UTC day number), prefixed ``policy/``.

    Read, when present: ``policy.day_metrics()`` (a dict), else the LLM arms' records of that day --
    ``policy.cycles`` (the daily cycle: wall time, round, KL, keys ...) and ``policy.fill_stats`` (lookup
    statuses, fallback slots).
    """
    out: dict = {}
    fn = getattr(policy, "day_metrics", None)
    if callable(fn):
        out.update(fn() or {})
    for attr, prefix in (("cycles", "cycle/"), ("fill_stats", "fill/")):
        recs = [r for r in (getattr(policy, attr, None) or []) if isinstance(r, dict) and r.get("day") == day]
        if recs:
            out.update({prefix + k: v for k, v in recs[-1].items() if k != "day"})
    return {f"policy/{k}": v for k, v in out.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def _served_ids(world: World, lists: list[list[str]], slots: int, arm: str) -> np.ndarray:
    """(U, K) category ids of a policy's lists; a short list is padded with its own entries, a bad name fails."""
    if len(lists) != len(world.user_ids):
        raise RuntimeError(f"arm {arm}: fill returned {len(lists)} lists for {len(world.user_ids)} users")
    rows = []
    for lst in lists:
        lst = list(lst)[:slots]
        if not lst:
            raise RuntimeError(f"arm {arm}: fill returned an empty list")
        while len(lst) < slots:
            lst.append(lst[len(lst) % len(lst)])
        rows.append(lst)
    try:
        return world.category_ids(rows)
    except ValueError as exc:
        raise RuntimeError(f"arm {arm}: {exc}") from None


# ------------------------------------------------------------------------------------------------ the run


def _policy_factory(name: str, cfg: Config, world: World, seed_dir: Path, round0: Path | None, coea_cfg,
                    train_seed: int = 0):
    if name in NON_LLM_ARMS:
        return lambda arm_dir, warmup: make_policy(name, world.catalogue, list(world.user_ids),
                                                   policy_seed(world.seed, train_seed),
                                                   warmup, ucb_c=cfg.sim.ucb_c, user_knn_k=cfg.sim.user_knn_k,
                                                   item_knn_k=cfg.sim.item_knn_k,
                                                   linucb_alpha=cfg.sim.linucb_alpha,
                                                   relation=world.relation if name == "kg_neighbour" else None)
    def factory(arm_dir: Path, warmup):
        arm_dir.mkdir(parents=True, exist_ok=True)
        return make_coea_arm(name, coea_cfg, arm_dir, world.catalogue, round0)

    return factory


def simulate(cfg: Config, out_dir: str | Path, *, seeds: list[int] | None = None, arms: list[str] | None = None,
             max_days: int | None = None, report: bool = True, allow_dirty: bool = False) -> SimResult:
    """Run (or resume) the closed-loop simulation into ``out_dir``.

    Args:
        cfg: the config; its ``sim`` section is the experiment.
        out_dir: output directory (created; an existing one is resumed).
        seeds: world seeds (default ``sim.seeds``), e.g. ``[cfg.sim.validation_seed]`` to choose settings.
        arms: arms (default ``sim.arms``).
        max_days: stop after this many A/B days (a test's "kill after day k"); the run resumes from there.
        report: write results.md, plots and the W&B runs at the end (coea/simulate/report.py).
        allow_dirty: run from uncommitted code anyway; the results are marked (coea/simulate/provenance.py).
            Without it such a run is refused before anything is written.

    Returns:
        A :class:`SimResult`.
    """
    t_start = time.perf_counter()
    sim = cfg.sim
    seeds = list(seeds) if seeds is not None else [int(s) for s in parse_list(sim.seeds)]
    arms = list(arms) if arms is not None else parse_list(sim.arms)
    unknown = [a for a in arms if a not in NON_LLM_ARMS + SIM_LLM_ARMS]
    if unknown:
        raise ConfigError(f"sim.arms: unknown arm(s) {', '.join(unknown)}")
    llm = [a for a in arms if a in SIM_LLM_ARMS]
    if llm and importlib.util.find_spec("coea.simulate.coea_arm") is None:
        raise ConfigError(f"sim.arms: the LLM arm(s) {', '.join(llm)} need coea/simulate/coea_arm.py, which is "
                          "not installed here; run the non-LLM arms (--arms exploitation,random,popular,ucb)")
    coea_cfg = coea_config_for(cfg) if llm else None
    prov = check_provenance(allow_dirty)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_world(cfg, out)
    record(out, prov)
    cfg.save(out / "config.yaml")
    days = DaysLog(out / DAYS_FILE)
    n_days = sim.days if max_days is None else min(sim.days, int(max_days))
    result = SimResult(out, seeds, arms)
    banner("Simulation", f"{len(seeds)} world seed(s)", f"{sim.days} days", f"{len(arms)} arms", str(out))

    done: dict[tuple[int, str, int], int] = {}  # resume: what every run on disk finished, asked for now or not
    for p in out.glob("seed*/*/state.pkl"):
        seed_text, (arm, t) = p.parent.parent.name[4:], parse_run_dir(p.parent.name)
        if seed_text.isdigit():
            done[(int(seed_text), arm, t)] = int(_load_pickle(p)["done_day"]) - sim.warmup_days
    days.clean(done)
    done = {k: v for k, v in done.items() if k[0] in seeds and k[1] in arms and k[2] in train_seeds_of(sim, k[0])}
    n_runs = sum(len(train_seeds_of(sim, sd)) for sd in seeds) * len(arms)

    with progress() as bars:
        task = bars.add_task("simulate", total=n_runs * n_days, unit="arm-days")
        bars.update(task, completed=sum(min(v + 1, n_days) for v in done.values()))
        for seed in seeds:
            seed_dir = out / f"seed{seed}"
            seed_dir.mkdir(parents=True, exist_ok=True)
            world = World(sim, seed)
            warm = run_warmup(world, seed_dir)
            runs = {}
            for t in train_seeds_of(sim, seed):
                t_cfg = _with_train_seed(coea_cfg, t) if llm else None
                round0 = (_round0(t_cfg, warm, seed_dir, day_end(sim, sim.warmup_days - 1), t) if llm else None)
                for a in arms:
                    runs[run_dir_name(a, t)] = ArmRun(
                        a, world, seed_dir, warm, _policy_factory(a, cfg, world, seed_dir, round0, t_cfg, t), t)
            for d in range(n_days):
                day = sim.warmup_days + d
                for key, run in runs.items():
                    if run.done_day >= day:
                        continue
                    bars.update(task, description=f"seed {seed} · day {d + 1}/{sim.days} · {key}")
                    run.run_day(day, days)
                    result.rows += 1
                    bars.advance(task)
            for key, run in runs.items():
                result.days_done[f"{seed}/{key}"] = run.done_day - sim.warmup_days + 1
    result.complete = all(v >= sim.days for v in result.days_done.values())
    result.wall_s = time.perf_counter() - t_start
    if report:
        write_report(cfg, out, arms=arms, seeds=seeds, allow_dirty=allow_dirty)
    return result


RESUMABLE_CHANGES = ("days", "arms", "seeds", "validation_seed", "train_seeds", "train_seed_worlds")  # a resumed run may extend these
ARM_SETTINGS = ("coea_config", "coea_set")  # the LLM arms' settings: checked per arm (ArmRun), not per world


def world_fingerprint(cfg: Config) -> str:
    """Hash of the ``sim`` settings a resumed run must share: all but :data:`RESUMABLE_CHANGES` and
    :data:`ARM_SETTINGS`."""
    import hashlib

    d = {k: v for k, v in cfg.to_dict()["sim"].items() if k not in RESUMABLE_CHANGES + ARM_SETTINGS}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _check_same_world(cfg: Config, out: Path) -> None:
    """Refuse to resume an output directory written with other world settings (exit 2, one line)."""
    marker = out / "world.fingerprint"
    fp = world_fingerprint(cfg)
    if marker.exists():
        old = marker.read_text().strip()
        if old != fp:
            raise ConfigError(f"sim: {out} holds a simulation with other sim settings (fingerprint {old}, now {fp}); "
                              "use a new --out, or the same settings (only sim.days, arms and seeds may change)")
    else:
        marker.write_text(fp + "\n")


def _check_arm_settings(arm_dir: Path, sim) -> None:
    """An LLM arm resumes only with the settings it started with (sim.coea_config, sim.coea_set)."""
    marker = arm_dir / "settings.json"
    now = {k: getattr(sim, k) for k in ARM_SETTINGS}
    if marker.exists():
        old = json.loads(marker.read_text())
        if old != now:
            raise ConfigError(f"sim.coea_set: {arm_dir} was started with {old}, now {now}; use a new --out or the "
                              "same LLM-arm settings")
    else:
        arm_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(now))


def _with_train_seed(coea_cfg: Config, train_seed: int) -> Config:
    """The LLM arms' config for training seed ``train_seed``: ``run.seed + train_seed`` (0: unchanged)."""
    if train_seed == 0:
        return coea_cfg
    return dataclasses.replace(coea_cfg, run=dataclasses.replace(coea_cfg.run, seed=coea_cfg.run.seed + train_seed))


def _round0(coea_cfg: Config, warm: Warmup, seed_dir: Path, until: int, train_seed: int = 0) -> Path:
    """Round 0 of the LLM arms, bootstrapped once per seed on the warm-up log (reused when done, also by arms whose
    sim.coea_set differs: each arm runs its own round 1 with its own settings; delete ``seed<S>/round0*`` to
    bootstrap again after changing what round 0 trains with)."""
    name = run_dir_name("round0", train_seed)
    marker = seed_dir / f"{name}.done"
    out = seed_dir / name
    if marker.exists():
        return Path(marker.read_text().strip() or out)
    path = bootstrap_round0(coea_cfg, warm.log_dir, out, until=until)
    marker.write_text(str(path))
    return Path(path)
