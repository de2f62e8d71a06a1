"""Integration fixtures: real test hosts (sshd + ufw) and a real control plane, started on demand."""

from pathlib import Path

import pytest

from tests.cluster.fixtures import *  # noqa: F403
from tests.lab.fixtures import *  # noqa: F403


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state folder (backups, audit log) of the test's own."""
    path = tmp_path / "state"
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(path))
    return path
