"""Shared fixtures. Servers run for real on free ports (proxy.server.ServerThread)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL_DIR = SHARED / "models" / "all-MiniLM-L6-v2-onnx"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / "model.onnx").exists():
        pytest.skip(f"offline embedding model not found at {MODEL_DIR}")
    return MODEL_DIR
