"""DSIE stage (encoder -> u_long -> RQ-VAE -> CSID groups -> portraits) on the demo world and on ml-100k.

    python benchmarks/dsie.py [--configs configs/demo.yaml configs/ml-100k.yaml] [--out benchmarks/results/dsie.json]

Runs exactly what ``coea dsie --config C --workdir W`` runs (loops.cycle.run_dsie_stage) in a temporary workdir
and prints one JSON line per config: wall times per sub-step, Figure-3 intra / inter cosine (centred and raw),
code utilisation, group count, and on the synthetic world purity / NMI of the CSIDs against the 8 latent groups,
next to two references: k-means (as many clusters as latent groups) on centred, L2-normalised u_long, and the
ceiling, k-means on each user's long-term category histogram. Writes all lines, with the machine description
and load average, to ``--out`` (timings on a shared machine move with its load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coea.config import load_config  # noqa: E402
from coea.data.sequences import build_sequences  # noqa: E402
from coea.groups import category_counts  # noqa: E402
from coea.rounds import cutoff, load_data  # noqa: E402
from loops.cycle import run_dsie_stage  # noqa: E402


def purity_nmi(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import normalized_mutual_info_score

    labels = np.asarray(labels).astype(str)
    hits = sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels))
    return {"purity": round(float(hits / len(truth)), 3),
            "nmi": round(float(normalized_mutual_info_score(truth, labels)), 3)}


def kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=5, random_state=seed).fit_predict(x)


def references(cfg_path: str, dsie_dir: Path) -> dict | None:
    """k-means purity on u_long and the category-histogram ceiling (synthetic world only)."""
    cfg = load_config(cfg_path)
    inter = load_data(cfg)
    if inter.ground_truth is None:
        return None
    seqs = build_sequences(inter, cfg.data, cutoff=cutoff(cfg, inter, 0))
    truth_by_user = inter.ground_truth.set_index("user_id")["latent_group"]
    warm = np.array([len(s) > 0 for s in seqs.long_items])
    truth = truth_by_user.loc[np.asarray(seqs.user_ids)[warm]].to_numpy()
    k = int(len(np.unique(truth)))
    u = np.load(dsie_dir / "u_long.npy")[warm]
    u = u - u.mean(axis=0)
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    counts = category_counts(seqs, inter.item_category, list(inter.categories))[warm].astype(float)
    hist = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return {"kmeans_u_long": purity_nmi(truth, kmeans(u, k)), "ceiling_kmeans_categories": purity_nmi(truth, kmeans(hist, k))}


def run_one(cfg_path: str) -> dict:
    cfg = load_config(cfg_path)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        report = run_dsie_stage(cfg, Path(tmp))
        total = time.perf_counter() - t
        refs = references(cfg_path, Path(tmp) / "rounds" / "000" / "dsie")
    fig3 = report["figure3"]
    return {
        "config": cfg_path, "load_avg_1m": round(os.getloadavg()[0], 2),
        "wall_time_s": {**{k: round(v, 2) for k, v in report["wall_time_s"].items()},
                        "dsie_total": round(sum(report["wall_time_s"].values()), 2), "cli_total": round(total, 2)},
        "encoder": {"epochs": cfg.encoder.epochs, "max_long_len": cfg.data.max_long_len,
                    "loss_first_last": [round(report["encoder"]["epoch_losses"][0], 3),
                                        round(report["encoder"]["epoch_losses"][-1], 3)]},
        "figure3": {"intra_centred": round(fig3["intra"], 3), "inter_centred": round(fig3["inter"], 3),
                    "intra_raw": round(fig3["raw"]["intra"], 3), "inter_raw": round(fig3["raw"]["inter"], 3)},
        "ground_truth": report["ground_truth"] and {k: round(v, 3) if isinstance(v, float) else v
                                                    for k, v in report["ground_truth"].items()},
        "references": refs,
        "n_users": report["n_users"], "n_warm": report["n_warm"], "n_cold": report["n_cold"],
        "n_groups": report["n_groups"], "n_code_tuples": report["n_code_tuples"],
        "code_usage": [{"used": u["used"], "perplexity": round(u["perplexity"], 2)} for u in report["code_utilisation"]],
        "reconstruction_error": report["reconstruction_error"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["configs/demo.yaml", "configs/ml-100k.yaml"])
    ap.add_argument("--out", default="benchmarks/results/dsie.json")
    args = ap.parse_args()
    lines = []
    for path in args.configs:
        line = run_one(path)
        print(json.dumps(line), flush=True)
        lines.append(line)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": lines}, indent=2) + "\n")


if __name__ == "__main__":
    main()
