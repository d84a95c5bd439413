"""The simulation's tests run from whatever tree the developer has: provenance reads a clean fake commit here
(tests/simulate/test_sim_provenance.py checks the real git reading and the refusal)."""

from __future__ import annotations

import pytest

import coea.simulate.provenance as provenance

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def clean_tree(monkeypatch):
    monkeypatch.setattr(provenance, "git_state", lambda repo=provenance.REPO: (FAKE_COMMIT, []))
