"""Exploration methods of Table 2 and the list policies (docs/evaluation.md).

    simple    random, popular, UCB1; the list policies (own ranking, novelty budget, v1's slots)
    bandits   HUCB, pHUCB (hierarchical / personalised UCB over categories), NLB (neural-linear bandit)
    knn       user-kNN, item-kNN over unexplored categories (shared with the simulation's arms)
    llm       CoEA and its ablations, Google-v1 (dual LLM), Google-v2 (single LLM), LLM-KERec, w/o R-LLM
"""

from coea.exploration.simple import (
    budget_list,
    by_score,
    by_score_unexplored,
    own_list,
    parse_slots,
    place_in_slots,
    popular_ranking,
    random_ranking,
    random_unexplored,
    slot_list,
    ucb_ranking,
    ucb_scores,
)

__all__ = [
    "budget_list", "by_score", "by_score_unexplored", "own_list", "parse_slots", "place_in_slots",
    "popular_ranking", "random_ranking", "random_unexplored", "slot_list", "ucb_ranking", "ucb_scores",
]
