"""Pytest fixtures for the lab hosts: import them into a conftest or a test module.

    from tests.lab.fixtures import *          # conftest.py
    from tests.lab.fixtures import lab_hosts  # noqa: F401  (a single test module)

Not root: the tests are skipped, with the reason. Root but a tool missing: they fail, so CI can
never pass by skipping them. A failed test's report carries the tail of every live host's logs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

import pytest

from tests.lab.hosts import HostSpec, Lab, LabError, free_base_ip, live_labs, missing_tools

__all__ = ["DEFAULT_WORKERS", "lab_factory", "lab_hosts"]

DEFAULT_WORKERS = tuple(f"k8s-worker-{i:02d}" for i in range(1, 6))
_LOG_PLUGIN = "kbf-lab-logs"
_PACKAGES = "openssh-server ufw iptables iproute2 util-linux sudo"


def _require_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab hosts need root (network namespaces, sshd, ufw): run the integration tests as root")
    missing = missing_tools()
    if missing:
        pytest.fail(f"lab hosts need {', '.join(missing)} on this machine (apt-get install {_PACKAGES})", pytrace=False)


class _LabLogs:
    """Adds the tail of every live lab's component logs to the report of a failed test."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if report.failed:
            for lab in live_labs():
                for name, text in lab.log_tails().items():
                    report.sections.append((f"lab {lab.token} {name}", text))
        return report


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """Build labs on demand: ``lab_factory(names_or_specs, base_ip=None, **Lab kwargs)``.

    Without base_ip a lab gets the first free addresses from 198.18.0.21 on, so it never
    collides with `lab_hosts` (.11-.15). Every lab is closed at the end of the session at the
    latest; use ``with lab_factory([...]) as lab:`` to close it sooner.
    """
    _require_lab()
    plugins = request.config.pluginmanager
    logs = None
    if not plugins.has_plugin(_LOG_PLUGIN):
        logs = _LabLogs()
        plugins.register(logs, _LOG_PLUGIN)
    # SIGTERM (CI timeouts, kill) becomes KeyboardInterrupt so pytest still runs the teardowns.
    sigterm = signal.getsignal(signal.SIGTERM)
    if sigterm == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    labs: list[Lab] = []

    def make(names: Sequence[str | HostSpec], base_ip: int | None = None, **kwargs: Any) -> Lab:
        if base_ip is None:
            base_ip = free_base_ip(len(names))
        lab = Lab(names, base_ip=base_ip, **kwargs)
        labs.append(lab)
        return lab

    errors = []
    try:
        yield make
    finally:
        for lab in reversed(labs):
            try:
                lab.close()
            except LabError as e:
                errors.append(str(e))
        if sigterm == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if logs is not None:
            plugins.unregister(logs)
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def lab_hosts(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    """Five default workers k8s-worker-01..05 at 198.18.0.11-15, ufw active with 22/tcp allowed."""
    with lab_factory(list(DEFAULT_WORKERS), base_ip=11) as lab:
        yield lab
