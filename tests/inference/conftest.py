from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    """Every test gets an empty bertkit cache (kernel choice, calibration maxima, auto decisions): no test
    reads what another, or a user's run, left."""
    monkeypatch.setenv("BERTKIT_CACHE_DIR", str(tmp_path / "bertkit-cache"))
    return tmp_path / "bertkit-cache"
