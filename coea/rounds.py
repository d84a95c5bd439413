"""The round layout and the round clock: where each round's artifacts live and which events a round sees.

Shared by the loops (which write these paths) and by evaluation and the CLI (which read them); lives in the
``coea`` core so that nothing above has to reach into ``loops/`` for a path (docs/cycle.md).

    WORKDIR/rounds/000/backbone/{model,tokenizer}   embedded base model and tokenizer (round 0)
    WORKDIR/rounds/NNN/backbone/{model,tokenizer}   the same, grown for new category names (only rounds that grew)
    WORKDIR/rounds/000/novelty/adapter              Novelty LLM after SFT (round 0)
    WORKDIR/rounds/NNN/pco/adapter                  Novelty LLM after round NNN's DPO + KL
    WORKDIR/rounds/NNN/relevance/model              Relevance LLM of round NNN (LoRA adapter + score head, or
                                                    full weights with lora.enabled: false)
    WORKDIR/rounds/NNN/relevance/calibration.json   its Platt calibration (tau_align applies to it)
    WORKDIR/rounds/NNN/dsie                         DSIE of round NNN (round 0, then every refresh)
    WORKDIR/rounds/NNN/data                         round NNN's window, vocabularies, sequence state (round_data)

The replay schedule of a static data set (:func:`cutoff`) is here; the clock that places each round's window
(live and replay, round 0's cut-off fixed in state.json) is coea/clock.py, and a round's data coea/round_data.py.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from coea.config import Config
from coea.data.loaders import load_interactions
from coea.workdir import read_json, round_dir, stage_done, write_json

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
    """The replay schedule of a static data set: events with timestamp < cutoff(k) are known at the end of round k
    (round 0 = the ``data.bootstrap_fraction`` share). The cycle computes round 0's value once and keeps it in
    state.json; the live clock and the recorded windows are in coea/clock.py and coea/round_data.py."""
    start, end = timeline(inter)
    c0 = start + int(cfg.data.bootstrap_fraction * (end - start))
    return min(end, c0 + int(round(k * cfg.cycle.replay_days * DAY)))


def is_validation_user(user_id: str) -> bool:
    """Stable 10% of users held out from every training signal of the cycle."""
    h = int.from_bytes(hashlib.blake2b(str(user_id).encode(), digest_size=4).digest(), "big")
    return h / 2**32 < VALIDATION_SHARE


def load_data(cfg: Config):
    """Load and clean the configured data set (rejects are counted, never fatal)."""
    return load_interactions(cfg.data, cfg.synthetic, cfg.run.seed)


# ------------------------------------------------------------------------------------------------ model artifacts


def backbone_round(workdir: Path, k: int | None = None) -> int:
    """The round whose ``backbone`` stage (tokenizer, embedded base model) is in use at round ``k``.

    Round 0 writes the first; a later round writes one only when its catalogue grew the tokenizer (docs/llms.md
    "A growing catalogue"). ``k=None`` means the newest in the workdir: its tokenizer encodes every category
    name seen so far, and every earlier round's Novelty adapter and Relevance model loads on its base (growth is
    append-only). Rounds older than this one's backbone must keep it: retention never deletes the returned round.
    """
    rounds = Path(workdir) / "rounds"
    found = sorted((int(p.parent.name) for p in rounds.glob("*/backbone") if p.is_dir() and p.parent.name.isdigit()),
                   reverse=True) if rounds.is_dir() else []
    return next((j for j in found if k is None or j <= k), 0)


def base_model_path(cfg: Config, workdir: Path, k: int | None = None) -> str:
    """The base model at round ``k`` (default: the newest): the embedded model saved by round 0 or grown by a later
    round, or the configured Hugging Face path / id (never grown: its tokenizer encodes new names as subwords)."""
    saved = round_dir(workdir, backbone_round(workdir, k)) / "backbone" / "model"
    return str(saved) if cfg.backbone.name == "embedded" else cfg.backbone.name


def tokenizer_path(workdir: Path, k: int | None = None) -> Path:
    """The tokenizer at round ``k`` (default: the newest), saved with :func:`base_model_path`'s model."""
    return round_dir(workdir, backbone_round(workdir, k)) / "backbone" / "tokenizer"


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


def previous_csids(workdir: Path, k: int, dsie_dir: Path) -> dict[str, str] | None:
    """user -> CSID served by round k-1, when round k-1 used the same DSIE as ``dsie_dir`` (else None).

    Round 0's are DSIE's own ``users.parquet``; later rounds' the round's ``users.parquet`` (what lookup reads).
    """
    import pandas as pd

    prev = k - 1
    if prev < 0:
        return None
    try:
        if latest_dsie_dir(workdir, prev) != Path(dsie_dir):
            return None
    except FileNotFoundError:
        return None
    path = round_dir(workdir, 0) / "dsie" / "users.parquet" if prev == 0 else round_dir(workdir, prev) / "users.parquet"
    if not path.exists():
        return None
    table = pd.read_parquet(path, columns=["user_id", "csid"])
    return dict(zip(table["user_id"].astype(str), table["csid"].astype(str)))


def round_cutoff(workdir: Path, k: int) -> int | None:
    """The cut-off round ``k`` of a workdir ran to: the end of its data window (``rounds/NNN/data/window.json``),
    i.e. its models trained on events before it. None when the round has no data stage."""
    path = round_dir(workdir, k) / "data" / "window.json"
    if not path.exists():
        return None
    end = read_json(path).get("end")
    return None if end is None else int(end)
