"""The one pairwise data path for DPO and the reward model (STYLE habit 6).

Records are ``{"prompt", "chosen", "rejected"}`` strings: for DPO, prompt = P_infer-nov and chosen / rejected
are category completions; for the reward model, prompt = "" and chosen / rejected are whole relevance texts
(trl's implicit-prompt format). Extra keys (user ids, categories) are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable


def preference_dataset(records: Iterable[dict]):
    """A ``datasets.Dataset`` with string columns prompt / chosen / rejected."""
    from datasets import Dataset

    rows = [{"prompt": r.get("prompt", ""), "chosen": r["chosen"], "rejected": r["rejected"]} for r in records]
    if not rows:
        raise ValueError("no preference pairs")
    return Dataset.from_list(rows)
