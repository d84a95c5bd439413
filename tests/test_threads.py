"""run.num_threads reaches every thread pool (coea.workdir.configure_threads), checked in fresh processes.

The speed effect is measured in benchmarks/threads.py, never in a timed test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coea.config import RunConfig

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, sys
from coea.config import load_config
from coea.workdir import setup_run
cfg = load_config(None, sys.argv[1:])
setup_run(cfg)
import torch
from threadpoolctl import threadpool_info
from tokenizers import Tokenizer, models, pre_tokenizers
tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.encode_batch(["a a"] * 64)  # starts the Rust pool if parallelism is on
print(json.dumps({"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                  "pools": sorted({p["num_threads"] for p in threadpool_info()}),
                  "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                          "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM", "COEA_SPARK_MASTER")}}))
"""


def _probe(*overrides: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM",
        "COEA_SPARK_MASTER")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", PROBE, *overrides], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_default_is_one_thread_everywhere():
    assert RunConfig().num_threads == 1
    got = _probe()
    assert got["torch"] == 1 and got["interop"] == 1 and got["pools"] == [1]
    assert got["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                          "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "COEA_SPARK_MASTER": "local[1]"}


def test_two_threads_and_the_library_default():
    got = _probe("run.num_threads=2")
    assert got["torch"] == 2 and got["pools"] == [2] and got["env"]["COEA_SPARK_MASTER"] == "local[2]"
    assert got["env"]["TOKENIZERS_PARALLELISM"] is None  # tokenizers keep their pool, capped by RAYON_NUM_THREADS
    untouched = _probe("run.num_threads=0")
    assert all(v is None for v in untouched["env"].values())  # 0 leaves the libraries' defaults alone
