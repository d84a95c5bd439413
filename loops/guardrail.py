"""The promotion guardrail: does round k's validation show a real regression against the promoted round?

The rule (docs/cycle.md, "The guardrail"). Round k's models and the promoted round's models both build lists for
the same validation users (their state at the previous cut-off); per user, d_u = C-H@1(new) - C-H@1(promoted)
(C-H@1 is 0 or 1 per user, coea/metrics.py). With n users, mean d and standard error se = sd(d) / sqrt(n):

    refuse  iff  mean d < -margin  and  mean d + z * se < 0

a drop larger than ``cycle.guardrail_margin`` that is also significant at the one-sided level of ``z`` (1.645: 5%).
Pairing removes the user-to-user variance that made two unpaired windows of 10-20 users useless to compare, so a
small log is judged; an unchanged model gives d = 0 for every user and always passes. Fewer than ``min_users``
paired users (or none): promoted with a warning (``guardrail/judged`` = 0). Without paired figures in the
metrics (e.g. an older caller) the unpaired rule applies: refuse when C-H@1 drops more than the margin below the
promoted round's recorded value.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("coea.guardrail")


def hits_at_1(recs: Sequence[Sequence[str]], truth: Sequence[dict]) -> list[int]:
    """Per-user C-H@1: 1 when the first recommended category is in the user's C_u^pref (``truth[i]["pref"]``)."""
    return [int(bool(r) and r[0] in t["pref"]) for r, t in zip(recs, truth)]


def paired_stats(new_hits: Sequence[int], base_hits: Sequence[int]) -> dict[str, float]:
    """``guardrail/*`` figures of the paired differences d_u = new - base (same users, same order).

    Hand check: new = (1, 1, 0, 0), base = (1, 1, 1, 1): d = (0, 0, -1, -1), mean -0.5, sd (ddof 1) = 0.5774,
    se = 0.2887.
    """
    d = np.asarray(new_hits, dtype=np.float64) - np.asarray(base_hits, dtype=np.float64)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"guardrail/paired_users": n, "guardrail/delta": float(d.mean()) if n else float("nan"),
            "guardrail/se": se, "val/base_C-H@1": float(np.mean(base_hits)) if n else float("nan")}


def judge(metrics: dict[str, Any], promoted_value: float | None, promoted_round: int, *, margin: float, z: float,
          min_users: int) -> tuple[bool, str]:
    """(promote?, reason) by the module's rule; writes ``guardrail/judged`` and ``guardrail/upper`` into metrics."""
    if "guardrail/delta" in metrics:
        n, delta, se = metrics["guardrail/paired_users"], metrics["guardrail/delta"], metrics["guardrail/se"]
        if n < max(min_users, 2):
            metrics["guardrail/judged"] = 0
            log.warning("guardrail: only %d paired validation users (< %d); promoting without judging", n,
                        max(min_users, 2))
            return True, ""
        upper = delta + z * (0.0 if math.isnan(se) else se)
        metrics["guardrail/judged"], metrics["guardrail/upper"] = 1, upper
        if delta < -margin and upper < 0:
            return False, (f"guardrail: on the same {n} validation users, C-H@1 is {delta:+.4f} against round "
                           f"{promoted_round}'s models (upper bound {upper:+.4f} < 0; margin {margin})")
        return True, ""
    new = metrics.get("val/C-H@1")
    if new is None or promoted_value is None:
        return True, ""
    n = metrics.get("val/users", 0)
    if n < min_users:
        metrics["guardrail/judged"] = 0
        log.warning("guardrail: only %d validation users (< cycle.guardrail_min_users = %d); promoting without "
                    "judging C-H@1 %.4f against %.4f", n, min_users, new, promoted_value)
        return True, ""
    metrics["guardrail/judged"] = 1
    if new < promoted_value - margin:
        return False, (f"guardrail: validation C-H@1 {new:.4f} is more than {margin} below round {promoted_round}'s "
                       f"{promoted_value:.4f}")
    return True, ""
