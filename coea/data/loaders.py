"""Load a data set into :class:`~coea.data.schema.Interactions`, cleaned the same way for every source.

Each source module (MovieLens 100K / 1M, Parquet logs, the synthetic world) reads its raw tables and hands them
to :func:`coea.data.clean.clean_interactions`, the one cleaning path; this module picks the source that
``data.source`` names. The rules are documented in docs/data.md.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coea.data import movielens
from coea.data.parquet import load_parquet
from coea.data.schema import DataError, Interactions
from coea.data.synthetic import generate_world

if TYPE_CHECKING:
    from coea.config import DataConfig, SyntheticConfig

log = logging.getLogger("coea.data")


def load_interactions(data: DataConfig, synthetic: SyntheticConfig, seed: int) -> Interactions:
    """Load the data set that ``data.source`` names, cleaned (see :func:`coea.data.clean.clean_interactions`).

    Args:
        data: the ``data`` config section (source, path, click rule, reject-row cap).
        synthetic: the ``synthetic`` config section (used when ``data.source == "synthetic"``).
        seed: seed of the synthetic world (ignored by the file sources).

    Raises:
        DataError: a required file is missing or has the wrong format (one line naming the file).
    """
    if data.source == "synthetic":
        inter = generate_world(synthetic, seed)
    elif data.source in ("movielens-100k", "movielens-1m"):
        loader = movielens.load_movielens_100k if data.source == "movielens-100k" else movielens.load_movielens_1m
        inter = loader(data.path, click_min_rating=data.click_min_rating, max_reject_rows=data.max_reject_rows)
    elif data.source == "parquet":
        inter = load_parquet(data.path, max_reject_rows=data.max_reject_rows)
    else:  # load_config validates the name; this guards direct construction
        raise DataError(f"data.source: unknown source {data.source!r}")
    log.info("loaded %s: %d events, %d items, %d users, %d categories; rejected %s, noted %s", data.source,
             len(inter.events), len(inter.items), len(inter.users), len(inter.categories), inter.rejects.counts,
             inter.rejects.kept)
    return inter
