"""Bandit exploration baselines over categories, learned offline from the logged feedback of the state.

Offline, a bandit's history is the log: every exposure or click of an item before the phase is a pull of its
category's arm, a click is reward 1, an exposure without a click reward 0 (MovieLens: a rating below
``data.click_min_rating`` is an exposure). Each method scores every category for every user; the list policies of
:mod:`coea.exploration.simple` make the lists.

    hucb   hierarchical UCB (after Song et al., WSDM 2022, "Show Me the Whole World", HCB): a two-level tree --
           clusters of categories (k-means on the categories' co-click profiles) above the categories -- with a
           UCB1 score at each node; a category scores its cluster's UCB plus its own UCB within the cluster.
           Simplified: UCB1 nodes on global counts instead of the paper's LinUCB nodes with user features, and a
           fixed two-level tree instead of the bottom-up item hierarchy.
    phucb  personalised hierarchical UCB: the same tree and score, each node's rate and bonus from the user's own
           pulls, the rate shrunk to the global one by an empirical-Bayes prior of strength m. Simplified: the
           personalisation is per-user statistics rather than pHCB's progressive expansion of visible nodes
           (Song et al.'s second algorithm), which has no offline analogue without an interaction loop.
    nlb    neural-linear bandit (Riquelme et al., ICLR 2018; the exploration baseline of Su et al., WSDM 2024): an
           MLP learns a user representation phi(x_u) from the user's category profile by predicting clicks, a
           Bayesian linear regression per category on phi gives mean and covariance, score = mean + alpha * std.
           Simplified: UCB on the posterior instead of Thompson sampling (deterministic lists), one offline fit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# ------------------------------------------------------------------------------------------------------- tree


def category_tree(profiles: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """(C,) cluster of each category: k-means on the categories' co-click profiles.

    Args:
        profiles: (N, C) clicks per user and category; each column (a category's users) is L2-normalised, so
            categories clicked by the same users fall into one cluster.
        n_clusters: clusters (clipped to [1, C]).
        seed: k-means seed.
    """
    from sklearn.cluster import KMeans

    C = profiles.shape[1]
    n_clusters = max(1, min(int(n_clusters), C))
    x = profiles.T.astype(np.float64)  # (C, N)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if n_clusters == 1 or C == 1:
        return np.zeros(C, dtype=np.int64)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)


def _rank(scores: np.ndarray, categories: Sequence[str]) -> list[list[str]]:
    """(U, C) scores -> per user categories by decreasing score, ties by name (inf first)."""
    names = np.asarray(categories, dtype=object)
    by_name = np.argsort(names, kind="stable")
    out = []
    for row in scores:
        order = by_name[np.argsort(-row[by_name], kind="stable")]
        out.append(names[order].tolist())
    return out


def _ucb(rate: np.ndarray, n: np.ndarray, total: np.ndarray, c: float) -> np.ndarray:
    """rate + c * sqrt(ln total / n); +inf where n == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bonus = c * np.sqrt(np.log(np.maximum(total, 1.0)) / n)
        out = rate + bonus
    return np.where(n > 0, out, np.inf)


def hucb_scores(clicks: np.ndarray, shows: np.ndarray, cluster: np.ndarray, c: float) -> np.ndarray:
    """(C,) hierarchical UCB: UCB1(cluster | root) + UCB1(category | cluster), global counts.

    UCB1(g | root) = k_g / n_g + c sqrt(ln N / n_g) with n_g, k_g the pulls and clicks of g's categories and
    N = all pulls; UCB1(category | g) = k_c / n_c + c sqrt(ln n_g / n_c). A node never pulled scores +inf.
    """
    clicks, shows = np.asarray(clicks, float), np.maximum(np.asarray(shows, float), np.asarray(clicks, float))
    n_g = np.bincount(cluster, weights=shows, minlength=cluster.max() + 1)[cluster]  # (C,)
    k_g = np.bincount(cluster, weights=clicks, minlength=cluster.max() + 1)[cluster]
    with np.errstate(divide="ignore", invalid="ignore"):
        top = _ucb(np.where(n_g > 0, k_g / n_g, 0.0), n_g, np.full_like(n_g, shows.sum()), c)
        leaf = _ucb(np.where(shows > 0, clicks / shows, 0.0), shows, n_g, c)
    return top + leaf


def hucb_ranking(n_users: int, clicks: Mapping[str, int], shows: Mapping[str, int], categories: Sequence[str],
                 cluster: np.ndarray, c: float) -> list[list[str]]:
    """HUCB: the same ranking for every user (global statistics)."""
    k = np.array([clicks.get(x, 0) for x in categories], float)
    n = np.array([shows.get(x, 0) for x in categories], float)
    return _rank(np.tile(hucb_scores(k, n, cluster, c), (n_users, 1)), categories)


def phucb_scores(user_clicks: np.ndarray, user_shows: np.ndarray, clicks: np.ndarray, shows: np.ndarray,
                 cluster: np.ndarray, c: float, prior: float) -> np.ndarray:
    """(U, C) personalised hierarchical UCB.

    For user u and node x (a cluster or a category): rate_ux = (k_ux + m p_x) / (n_ux + m), p_x the global click
    rate of x, m = ``prior``; bonus_ux = c sqrt(ln(n_u,parent + e) / (n_ux + 1)) with the parent's pulls by u (all
    of u's pulls for a cluster). score = rate_ug + bonus_ug + rate_uc + bonus_uc.
    """
    G = int(cluster.max()) + 1
    onehot = np.eye(G)[cluster]  # (C, G)
    uk, un = np.asarray(user_clicks, float), np.maximum(np.asarray(user_shows, float), np.asarray(user_clicks, float))
    k, n = np.asarray(clicks, float), np.maximum(np.asarray(shows, float), np.asarray(clicks, float))
    p_c = np.where(n > 0, k / np.maximum(n, 1), 0.0)  # (C,)
    n_g, k_g = n @ onehot, k @ onehot
    p_g = np.where(n_g > 0, k_g / np.maximum(n_g, 1), 0.0)  # (G,)
    ug_n, ug_k = un @ onehot, uk @ onehot  # (U, G)
    rate_g = (ug_k + prior * p_g) / (ug_n + prior) if prior > 0 else np.where(ug_n > 0, ug_k / np.maximum(ug_n, 1), 0)
    bonus_g = c * np.sqrt(np.log(un.sum(1, keepdims=True) + math.e) / (ug_n + 1))
    rate_c = (uk + prior * p_c) / (un + prior) if prior > 0 else np.where(un > 0, uk / np.maximum(un, 1), 0)
    bonus_c = c * np.sqrt(np.log(ug_n[:, cluster] + math.e) / (un + 1))
    return (rate_g + bonus_g)[:, cluster] + rate_c + bonus_c


def phucb_ranking(user_clicks: Sequence[Counter], user_shows: Sequence[Counter], clicks: Mapping[str, int],
                  shows: Mapping[str, int], categories: Sequence[str], cluster: np.ndarray, c: float,
                  prior: float) -> list[list[str]]:
    uk = np.array([[u.get(x, 0) for x in categories] for u in user_clicks], float).reshape(-1, len(categories))
    un = np.array([[u.get(x, 0) for x in categories] for u in user_shows], float).reshape(-1, len(categories))
    k = np.array([clicks.get(x, 0) for x in categories], float)
    n = np.array([shows.get(x, 0) for x in categories], float)
    return _rank(phucb_scores(uk, un, k, n, cluster, c, prior), categories)


# -------------------------------------------------------------------------------------------- neural-linear


@dataclass
class Logged:
    """The state's logged feedback, one row per event, and every user's category counts.

    user: (E,) row of the event's user in ``user_clicks`` / ``user_shows``; category: (E,) category index;
    click: (E,) 1.0 for a click, 0.0 for an exposure. user_clicks / user_shows: (N, C) counts (shows include clicks).
    """

    user: np.ndarray
    category: np.ndarray
    click: np.ndarray
    user_clicks: np.ndarray
    user_shows: np.ndarray


def _profile(clicks, shows):  # (B, C), (B, C) -> (B, 2C) shares of the user's clicks and pulls per category
    import torch

    return torch.cat([clicks / clicks.sum(1, keepdim=True).clamp(min=1.0),
                      shows / shows.sum(1, keepdim=True).clamp(min=1.0)], dim=1)


@dataclass
class NeuralLinear:
    """A fitted neural-linear bandit: the representation net and one Bayesian linear model per category."""

    net: object
    a_inv: np.ndarray  # (C, d, d) posterior covariance (up to the noise scale) per category
    mean: np.ndarray  # (C, d) posterior mean weights

    def scores(self, user_clicks: np.ndarray, user_shows: np.ndarray, alpha: float) -> np.ndarray:
        """(U, C) mean + alpha * std of the click estimate of every category for users with these counts."""
        import torch

        with torch.no_grad():
            phi = _with_bias(self.net(_profile(torch.as_tensor(user_clicks, dtype=torch.float32),
                                               torch.as_tensor(user_shows, dtype=torch.float32))).numpy())  # (U, d+1)
        mu = phi @ self.mean.T  # (U, C)
        var = np.einsum("ud,cde,ue->uc", phi, self.a_inv, phi)
        return mu + alpha * np.sqrt(np.maximum(var, 0.0))


def fit_neural_linear(logged: Logged, n_categories: int, *, hidden: int, epochs: int, ridge: float,
                      seed: int, batch_size: int = 512, lr: float = 3e-3) -> NeuralLinear:
    """Train phi on the log (BCE on clicks, leave-one-out profiles), then the per-category linear posteriors.

    Each event's input is its user's profile *without that event* (a click must not predict itself).
    Posterior per category c over the events of c, phi with a constant 1 appended (the intercept):
    A_c = ridge I + sum phi phi^T, mean_c = A_c^{-1} sum y phi; a category nobody was shown keeps the prior.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    C = n_categories
    uc = torch.as_tensor(logged.user_clicks, dtype=torch.float32)  # (N, C)
    us = torch.as_tensor(logged.user_shows, dtype=torch.float32)
    user = torch.as_tensor(logged.user, dtype=torch.long)
    cat = torch.as_tensor(logged.category, dtype=torch.long)
    y = torch.as_tensor(logged.click, dtype=torch.float32)
    net = nn.Sequential(nn.Linear(2 * C, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
    head = nn.Linear(hidden, C)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def inputs(idx):
        one = torch.nn.functional.one_hot(cat[idx], C).float()  # (B, C)
        return _profile(uc[user[idx]] - y[idx, None] * one, us[user[idx]] - one)

    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            logits = head(net(inputs(idx))).gather(1, cat[idx, None]).squeeze(1)  # (B,)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    d = hidden + 1
    a = np.tile(np.eye(d) * ridge, (C, 1, 1))  # (C, d, d)
    b = np.zeros((C, d))
    with torch.no_grad():
        for s in range(0, len(y), 4096):
            idx = torch.arange(s, min(s + 4096, len(y)))
            phi = _with_bias(net(inputs(idx)).numpy())  # (B, d)
            c_idx = logged.category[s:s + len(idx)]
            np.add.at(a, c_idx, np.einsum("bd,be->bde", phi, phi))
            np.add.at(b, c_idx, phi * logged.click[s:s + len(idx), None])
    a_inv = np.linalg.inv(a)
    mean = np.einsum("cde,ce->cd", a_inv, b)
    return NeuralLinear(net=net.eval(), a_inv=a_inv, mean=mean)


def _with_bias(phi: np.ndarray) -> np.ndarray:
    return np.concatenate([phi, np.ones((len(phi), 1), dtype=phi.dtype)], axis=1)


def nlb_ranking(model: NeuralLinear, user_clicks: Sequence[Counter], user_shows: Sequence[Counter],
                categories: Sequence[str], alpha: float) -> list[list[str]]:
    uk = np.array([[u.get(x, 0) for x in categories] for u in user_clicks], float).reshape(-1, len(categories))
    un = np.array([[u.get(x, 0) for x in categories] for u in user_shows], float).reshape(-1, len(categories))
    return _rank(model.scores(uk, np.maximum(un, uk), alpha), categories)


def logged_feedback(events, categories: Sequence[str], category_of: Mapping[str, str]) -> Logged:
    """:class:`Logged` from an events table (user_id, item_id, event) and the item -> category map."""
    index = {c: i for i, c in enumerate(categories)}
    cats = events["item_id"].astype(str).map(category_of).map(index)
    keep = cats.notna().to_numpy()
    users, user_row = np.unique(events["user_id"].astype(str).to_numpy()[keep], return_inverse=True)
    cat = cats.to_numpy()[keep].astype(np.int64)
    click = (events["event"] == "click").to_numpy()[keep].astype(np.float64)
    C = len(categories)
    uc = np.zeros((len(users), C))
    us = np.zeros((len(users), C))
    np.add.at(uc, (user_row, cat), click)
    np.add.at(us, (user_row, cat), 1.0)
    return Logged(user=user_row.astype(np.int64), category=cat, click=click, user_clicks=uc, user_shows=us)
