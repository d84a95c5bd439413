"""The round layout and the round clock: where each round's artifacts live and which events a round sees.

Shared by the loops (which write these paths) and by evaluation and the CLI (which read them); lives in the
``coea`` core so that nothing above has to reach into ``loops/`` for a path (docs/cycle.md).

    WORKDIR/rounds/000/backbone/{model,tokenizer}   embedded base model and tokenizer (round 0)
    WORKDIR/rounds/000/novelty/adapter              Novelty LLM after SFT (round 0)
    WORKDIR/rounds/NNN/pco/adapter                  Novelty LLM after round NNN's DPO + KL
    WORKDIR/rounds/NNN/relevance/model              Relevance LLM of round NNN
    WORKDIR/rounds/NNN/dsie                         DSIE of round NNN (round 0, then every refresh)
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from coea.config import Config
from coea.workdir import read_json, round_dir, stage, stage_done, write_json, write_manifest

log = logging.getLogger("coea.rounds")

DAY = 86_400
VALIDATION_SHARE = 0.1
STATE_FILE = "state.json"


# ------------------------------------------------------------------------------------------------ state.json


def read_state(workdir: Path) -> dict[str, Any]:
    """``WORKDIR/state.json`` (loops/state.py documents the fields); an empty history when there is none yet."""
    path = Path(workdir) / STATE_FILE
    if not path.exists():
        return {"promoted_round": None, "config_fingerprint": None, "rounds": []}
    return read_json(path)


def write_state(workdir: Path, state: dict[str, Any]) -> None:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    write_json(Path(workdir) / STATE_FILE, state)


# ------------------------------------------------------------------------------------------------ replay windows


def timeline(inter) -> tuple[int, int]:
    ts = inter.events["timestamp"]
    return int(ts.min()), int(ts.max()) + 1


def cutoff(cfg: Config, inter, k: int) -> int:
    """Events with timestamp < cutoff(k) are known at the end of round k (round 0 = the bootstrap share)."""
    start, end = timeline(inter)
    c0 = start + int(cfg.data.bootstrap_fraction * (end - start))
    return min(end, c0 + int(round(k * cfg.cycle.replay_days * DAY)))


def is_validation_user(user_id: str) -> bool:
    """Stable 10% of users held out from every training signal of the cycle."""
    h = int.from_bytes(hashlib.blake2b(str(user_id).encode(), digest_size=4).digest(), "big")
    return h / 2**32 < VALIDATION_SHARE


def load_data(cfg: Config):
    """Load and clean the configured data set (rejects are counted, never fatal)."""
    from coea.data.loaders import load_interactions

    return load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)


def write_data_stage(cfg: Config, round_path: Path, inter, *, start: int | None, end: int) -> dict[str, Any]:
    """``rounds/NNN/data``: the round's window and the rejects file (every rejected row with its reason)."""
    from coea.data.loaders import write_rejects

    if stage_done(round_path, "data"):
        return read_json(round_path / "data" / "window.json")
    with stage(round_path, "data") as tmp:
        counts = write_rejects(inter.rejects, tmp / "rejects.jsonl")
        ev = inter.events
        in_window = (ev["timestamp"] < end) & ((ev["timestamp"] >= start) if start is not None else True)
        window = {"start": start, "end": end, "events": int(in_window.sum()),
                  "clicks": int((in_window & (ev["event"] == "click")).sum()),
                  "users": int(ev.loc[in_window, "user_id"].nunique()), "rejects": counts}
        write_json(tmp / "window.json", window)
        write_manifest(tmp, cfg)
    if inter.rejects.total:
        log.warning("data: %d input rows rejected (%s); see %s", inter.rejects.total, inter.rejects.counts,
                    round_path / "data" / "rejects.jsonl")
    return window


# ------------------------------------------------------------------------------------------------ model artifacts


def base_model_path(cfg: Config, workdir: Path) -> str:
    """The Novelty base model: the embedded model saved in round 0, or the configured HF path / id."""
    saved = round_dir(workdir, 0) / "backbone" / "model"
    return str(saved) if cfg.backbone.name == "embedded" else cfg.backbone.name


def tokenizer_path(workdir: Path) -> Path:
    return round_dir(workdir, 0) / "backbone" / "tokenizer"


def novelty_adapter(workdir: Path, k: int) -> Path:
    return round_dir(workdir, 0) / "novelty" / "adapter" if k == 0 else round_dir(workdir, k) / "pco" / "adapter"


def relevance_model_dir(workdir: Path, k: int) -> Path:
    return round_dir(workdir, k) / "relevance" / "model"


def latest_dsie_dir(workdir: Path, k: int) -> Path:
    """The newest ``dsie`` stage at or before round k."""
    for j in range(k, -1, -1):
        if stage_done(round_dir(workdir, j), "dsie"):
            return round_dir(workdir, j) / "dsie"
    raise FileNotFoundError(f"no DSIE stage at or before round {k} in {workdir}")


def round_cutoff(workdir: Path, k: int) -> int | None:
    """The cut-off round ``k`` of a workdir ran to: the end of its data window (``rounds/NNN/data/window.json``),
    i.e. its models trained on events before it. None when the round has no data stage."""
    path = round_dir(workdir, k) / "data" / "window.json"
    if not path.exists():
        return None
    end = read_json(path).get("end")
    return None if end is None else int(end)
