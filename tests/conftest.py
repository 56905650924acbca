"""Shared fixtures. Nothing here downloads: HF_HUB_OFFLINE is forced before any import."""

from __future__ import annotations

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def models_tree(tmp_path_factory):
    """The tiny models tree, written once per test session."""
    from fdd.testing.models_tree import write_models_tree

    root = tmp_path_factory.mktemp("models")
    return write_models_tree(root)
