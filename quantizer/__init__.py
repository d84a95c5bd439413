"""RQ-VAE and CSID assignment. Imports nothing from ``coea`` or ``loops`` (plain tensors in, NamedTuples out)."""

from quantizer.csid import CsidMap, build_csid_map, format_csid
from quantizer.rqvae import (
    RQVAE, RQVAELosses, RQVAEModule, RQVAEOutput, RQVAETrainResult, code_utilisation, train_rqvae,
)

__all__ = [
    "RQVAE", "RQVAELosses", "RQVAEModule", "RQVAEOutput", "RQVAETrainResult", "code_utilisation", "train_rqvae",
    "CsidMap", "build_csid_map", "format_csid",
]
