"""The promotion guardrail: does round k's validation show a real regression against the promoted round?

The rule (docs/cycle.md, "The guardrail"). Round k's models and the promoted round's models both build lists for
the same validation users (their state at the previous cut-off); per user, d_u = C-H@1(new) - C-H@1(promoted)
(C-H@1 is 0 or 1 per user, coea/metrics.py). Only discordant users carry evidence: ``wins`` (d_u = +1) and
``losses`` (d_u = -1). The round is refused when

    mean d < -margin   and   P(Binomial(wins + losses, 1/2) <= wins) < alpha

a drop larger than ``cycle.guardrail_margin`` that is also significant in the exact one-sided sign test
(McNemar's exact test) at ``cycle.guardrail_alpha``. Pairing removes the user-to-user variance that made two
unpaired windows of 10-20 users useless to compare, so a small log is judged; an unchanged model has no
discordant user and always passes; and because the test is exact, a round whose models are as good as the
promoted ones for every user (each discordant user equally likely to go either way) is refused with probability
below alpha, however few the users. (A normal approximation was tried first: with 3-5 discordant users it refused
7.2% of such rounds on the demo, above its nominal 5%.) Fewer than ``min_users`` paired users: promoted with a
warning (``guardrail/judged`` = 0). Without paired figures in the metrics (e.g. an older caller) the unpaired rule
applies: refuse when C-H@1 drops more than the margin below the promoted round's recorded value.
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


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(Binomial(wins + losses, 1/2) <= wins); 1.0 without discordant users.

    Hand check: 0 wins, 3 losses: 1/8 = 0.125; 1 win, 5 losses: (1 + 6) / 64 = 0.109375.
    """
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins + 1)) / 2 ** n if n else 1.0


def paired_stats(new_hits: Sequence[int], base_hits: Sequence[int]) -> dict[str, float]:
    """``guardrail/*`` figures of the paired differences d_u = new - base (same users, same order).

    Hand check: new = (1, 1, 0, 0), base = (1, 1, 1, 1): d = (0, 0, -1, -1), mean -0.5, 0 wins, 2 losses,
    p = 1/4.
    """
    d = np.asarray(new_hits, dtype=np.float64) - np.asarray(base_hits, dtype=np.float64)
    n = len(d)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return {"guardrail/paired_users": n, "guardrail/delta": float(d.mean()) if n else float("nan"),
            "guardrail/wins": wins, "guardrail/losses": losses, "guardrail/p_value": sign_test_p(wins, losses),
            "val/base_C-H@1": float(np.mean(base_hits)) if n else float("nan")}


def judge(metrics: dict[str, Any], promoted_value: float | None, promoted_round: int, *, margin: float,
          alpha: float, min_users: int) -> tuple[bool, str]:
    """(promote?, reason) by the module's rule; writes ``guardrail/judged`` into metrics."""
    if "guardrail/delta" in metrics:
        n, delta, p = metrics["guardrail/paired_users"], metrics["guardrail/delta"], metrics["guardrail/p_value"]
        if n < max(min_users, 1):
            metrics["guardrail/judged"] = 0
            log.warning("guardrail: only %d paired validation users (< %d); promoting without judging", n,
                        max(min_users, 1))
            return True, ""
        metrics["guardrail/judged"] = 1
        if delta < -margin and p < alpha:
            return False, (f"guardrail: on the same {n} validation users, C-H@1 is {delta:+.4f} against round "
                           f"{promoted_round}'s models ({metrics['guardrail/wins']} users gained a hit, "
                           f"{metrics['guardrail/losses']} lost one; sign test p = {p:.4f} < {alpha}; margin "
                           f"{margin})")
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
