"""Pytest fixtures for tests that need a real Kubernetes API server.

tests/integration/conftest.py does ``from tests.cluster.fixtures import *``. The control plane is
built (or taken from the build cache) and started once per session; it never skips: a test that
asked for a cluster and cannot get one fails, with the component logs named in the error.

Set KEYBUZZ_FIX_BIN_DIR to use binaries built elsewhere instead of running tests/cluster/build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane, ControlPlaneError, build_binaries
from tests.cluster.reset import reset_cluster
from tests.cluster.seed import DEFAULT_MASTERS, DEFAULT_WORKERS, SEEDED_NAMESPACES, Nodes, seed_keybuzz

__all__ = ["ROUTES", "KeybuzzCluster", "control_plane", "keybuzz_cluster", "no_routes"]

# The Ingress routes the tool applies in namespace keybuzz (manifests/defaults.yaml).
ROUTES = ("keybuzz-front-ingress", "keybuzz-api-ingress")


@dataclass(frozen=True)
class KeybuzzCluster:
    """A control plane freshly seeded with the KeyBuzz state, and an admin client for it."""

    control_plane: ControlPlane
    api_client: client.ApiClient
    workers: Nodes
    masters: Nodes
    objects: list[dict[str, Any]]

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig, to hand to the code under test."""
        return self.control_plane.kubeconfig

    @property
    def worker_names(self) -> list[str]:
        """Names of the worker nodes, in seed order."""
        return [name for name, _ in self.workers]

    @property
    def master_names(self) -> list[str]:
        """Names of the master nodes, in seed order."""
        return [name for name, _ in self.masters]


def _report(request: pytest.FixtureRequest, line: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line, yellow=True)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver, controller-manager, scheduler and kwok for the whole session."""
    problem = ""
    try:
        bin_dir = Path(os.environ["KEYBUZZ_FIX_BIN_DIR"]) if "KEYBUZZ_FIX_BIN_DIR" in os.environ else build_binaries()
    except ControlPlaneError as e:
        problem = f"cannot build the test control plane: {e}"
    if problem:
        pytest.fail(problem, pytrace=False)
    cp = ControlPlane(bin_dir)
    try:
        cp.start()  # stops what it started if it fails, keeping the logs
    except ControlPlaneError as e:
        kept = f" (logs kept in {cp.logs_dir})" if cp.logs_dir.exists() else ""
        problem = f"cannot start the test control plane{kept}: {e}"
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield cp
    finally:
        failed = request.session.testsfailed > 0
        cp.stop(keep_logs=failed)
        if failed:
            _report(request, f"control plane logs kept in {cp.logs_dir}")


@pytest.fixture(scope="module")
def keybuzz_cluster(control_plane: ControlPlane) -> Iterator[KeybuzzCluster]:
    """Give each test module the seeded KeyBuzz cluster, reset from whatever earlier modules left."""
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        names = [name for name, _ in [*DEFAULT_MASTERS, *DEFAULT_WORKERS]]
        problem = ""
        try:
            reset_cluster(api, keep_namespaces=SEEDED_NAMESPACES, keep_nodes=names)
            objects = seed_keybuzz(api, DEFAULT_WORKERS, DEFAULT_MASTERS)
        except TimeoutError as e:
            problem = f"seeding the test cluster failed (logs in {control_plane.logs_dir}): {e}"
        if problem:
            pytest.fail(problem, pytrace=False)
        yield KeybuzzCluster(control_plane, api, list(DEFAULT_WORKERS), list(DEFAULT_MASTERS), objects)
    finally:
        api.close()


@pytest.fixture
def no_routes(keybuzz_cluster: KeybuzzCluster) -> Iterator[client.NetworkingV1Api]:
    """The networking API, with none of the tool's Ingress routes in keybuzz before and after the test."""
    net = client.NetworkingV1Api(keybuzz_cluster.api_client)

    def clear() -> None:
        for name in ROUTES:
            try:
                net.delete_namespaced_ingress(name, "keybuzz")
            except ApiException as e:
                if e.status != 404:
                    raise

    clear()
    yield net
    clear()
