"""What every tier of the suite shares.

    tests/unit         pure: no network, no root, no subprocess corpus (seconds)
    tests/cli          the command line end to end, many runs in subprocesses
    tests/property     the parsers and readers fed generated input (hypothesis)
    tests/integration  root: real test hosts (sshd + ufw in network namespaces) and a real API server

The lab and control-plane fixtures are registered here for every tier; they start nothing until a
test asks for them. Integration tests need root: as another user they are skipped, with the
reason, so ``pytest -m "not integration"`` (or a plain ``pytest``) runs anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.lab.fixtures", "tests.cluster.fixtures"]

_NEEDS_ROOT = (
    "integration tests need root (network namespaces, the lab's sshd and ufw, the test control plane): "
    "run them as root (tests/run), or leave them out with -m 'not integration'"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the integration tests for a user who is not root, the same way for the lab and the cluster."""
    if os.geteuid() == 0:
        return
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(pytest.mark.skip(reason=_NEEDS_ROOT))


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state folder (backups, audit log) of the test's own."""
    path = tmp_path / "state"
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(path))
    return path
