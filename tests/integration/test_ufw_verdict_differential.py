"""The UFW verdict model against real packets (see tests/lab/ufw_differential.py for the topology).

Hypothesis generates rule sets (every rule form of ufw(8): allow/deny/reject/limit, in/out/route,
interfaces, addresses and networks of both families, ports, ranges, lists, source ports,
application profiles, comments, log types, insert/prepend, and the default policies, IPV6 and
the status); the real ufw of a lab host loads each one, and TCP connects to 31695/32720 and UDP
datagrams to 8472 from sources inside and outside the rules' networks (IPv4 and IPv6, on two
interfaces, to the host and routed through it) decide what it really does. The model, fed the
files ufw wrote, must give the same verdict for every flow. Every 25th set also checks the fast
loading against a real ``ufw-init force-reload``.

``KBF_UFW_DIFFERENTIAL_SETS`` changes the number of rule sets (300 by default, fixed seed);
``benchmarks/ufw_differential.py`` runs 3,000.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.lab.hosts import HostSpec, Lab
from tests.lab.ufw_differential import NAMED, SEED, Tally, Topology, cases, run_case

pytestmark = pytest.mark.integration
SETS = int(os.environ.get("KBF_UFW_DIFFERENTIAL_SETS", "300"))
CHECK_EVERY = 25


@pytest.fixture(scope="module")
def topology(lab_factory: Callable[..., Lab]) -> Iterator[Topology]:
    specs = [
        HostSpec("ufw-target", http_listener=False),
        HostSpec("ufw-source", ufw_active=False, http_listener=False),
        HostSpec("ufw-backend", ufw_active=False, http_listener=False),
    ]
    with lab_factory(specs) as lab:
        topo = Topology(lab, "ufw-source", "ufw-target", "ufw-backend")
        try:
            yield topo
        finally:
            topo.close()


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_example(topology: Topology, name: str) -> None:
    """The issue's cases and every disagreement found while building the test, on the real ufw."""
    tally = Tally()
    run_case(topology, NAMED[name], tally, check=True)
    assert not tally.check_failures, tally.check_failures[0]
    assert not tally.disagreements, "\n\n".join(d.report() for d in tally.disagreements)


def test_model_agrees_with_real_packets(topology: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    tally = Tally()

    @settings(
        max_examples=SETS,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    @given(cases())
    def one(case: object) -> None:
        run_case(topology, case, tally, check=tally.cases % CHECK_EVERY == 0)  # type: ignore[arg-type]

    one()
    with capsys.disabled():
        print(f"\n{tally.summary()}")
    assert tally.cases >= SETS
    assert not tally.check_failures, "fast loading differs from ufw-init:\n" + "\n\n".join(tally.check_failures[:3])
    assert not tally.disagreements, "\n\n".join(d.report() for d in tally.disagreements[:20])
