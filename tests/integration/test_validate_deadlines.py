"""`validate` ends within its checks' budgets whatever the sites do (issue: a URL check that never ends).

The control plane is real; the sites are misbehaving servers on 127.0.0.1: a 200 whose chunked body
trickles for ever (an event stream, a slow-drip proxy), headers sent line by line, a server that
accepts and never answers. Each run must end within the URL budget plus a little for the API reads;
the bound is the behaviour under test, not a speed claim.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.cluster.fixtures import KeybuzzCluster
from tests.integration.test_ingress_command import servers_tsv
from tests.lab import slow_server as slow
from tests.lab.slow_server import SlowServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
URL_TIMEOUT = 3.0
API_SLACK = 10.0  # the API reads of the other checks, on a loaded machine


@pytest.fixture
def site() -> Iterator:
    made: list[SlowServer] = []

    def make(behaviour: slow.Behaviour) -> SlowServer:
        made.append(SlowServer(behaviour))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize(
    ("behaviour", "evidence"),
    [
        (slow.trickling_body, "answered 200"),
        (slow.slow_headers, "timed out after 3 s (got 'HTTP/1.1 200 OK', the headers never ended)"),
        (slow.silent, "timed out after 3 s"),
    ],
    ids=["trickling-body", "headers-line-by-line", "silent"],
)
def test_validate_ends_within_its_budget(
    keybuzz_cluster: KeybuzzCluster, site, tmp_path: Path, behaviour, evidence: str
) -> None:
    s = site(behaviour)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"validate:\n  urls: [http://127.0.0.1:{s.port}/, http://127.0.0.1:{s.port}/api]\n")
    start = time.monotonic()
    result = CliRunner().invoke(
        app,
        [
            "validate",
            str(servers_tsv(tmp_path / "servers.tsv")),
            "--kubeconfig",
            str(keybuzz_cluster.kubeconfig),
            "--config",
            str(cfg),
            "--url-timeout",
            str(URL_TIMEOUT),
            "--retries",
            "0",
            "--known-hosts",
            str(tmp_path / "none"),
            "-o",
            "json",
        ],
    )
    took = time.monotonic() - start
    card = json.loads(result.stdout)
    c7 = card["checks"][6]
    assert evidence in c7["detail"], c7
    assert c7["status"] == ("pass" if behaviour is slow.trickling_body else "fail")
    assert took < URL_TIMEOUT + API_SLACK, took
