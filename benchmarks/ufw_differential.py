"""The UFW verdict model against real packets, at length: 3,000 rule sets by default.

The same lab, rule sets and comparison as tests/integration/test_ufw_verdict_differential.py
(see tests/lab/ufw_differential.py), with another seed by default so it does not repeat the CI
run. Writes the counts (and every disagreement) as JSON; exits 1 if there is any. As root:

    python3 -m benchmarks.ufw_differential                    # 3,000 sets → benchmarks/ufw_differential.json
    python3 -m benchmarks.ufw_differential --sets 500 --seed 15 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.lab.hosts import HostSpec, Lab, free_base_ip
from tests.lab.ufw_differential import NAMED, Case, Tally, Topology, cases, run_case

OUT = Path(__file__).with_name("ufw_differential.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=3000, help="generated rule sets (default 3000)")
    ap.add_argument("--seed", type=int, default=20260415, help="hypothesis seed")
    ap.add_argument("--check-every", type=int, default=100, help="compare the fast loading with ufw-init every N sets")
    ap.add_argument("--out", type=Path, default=OUT, help=f"JSON result (default {OUT})")
    args = ap.parse_args(argv)
    specs = [
        HostSpec("ufw-target", http_listener=False),
        HostSpec("ufw-source", ufw_active=False, http_listener=False),
        HostSpec("ufw-backend", ufw_active=False, http_listener=False),
    ]
    tally = Tally()
    with Lab(specs, base_ip=free_base_ip(len(specs))) as lab:
        topo = Topology(lab, "ufw-source", "ufw-target", "ufw-backend")
        try:
            for case in NAMED.values():
                run_case(topo, case, tally, check=True)

            @settings(
                max_examples=args.sets,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @seed(args.seed)
            @given(cases())
            def one(case: Case) -> None:
                run_case(
                    topo,
                    case,
                    tally,
                    check=tally.cases % args.check_every == 0,
                    log=lambda text: print(text, file=sys.stderr, flush=True),
                )
                if tally.cases % 250 == 0:
                    print(tally.summary(), flush=True)

            one()
        finally:
            topo.close()
    summary = tally.summary()
    print(summary)
    args.out.write_text(
        json.dumps(
            {
                "summary": summary,
                "rule_sets": tally.cases,
                "named_examples": len(NAMED),
                "flows": tally.probes,
                "verdicts": tally.verdicts,
                "disagreements": len(tally.disagreements),
                "fast_load_checks": tally.checks,
                "fast_load_check_failures": tally.check_failures,
                "seed": args.seed,
                "examples": [
                    {
                        "flow": d.probe.flow().describe(),
                        "model": d.model,
                        "packets": d.packets,
                        "detail": d.detail,
                        "rules": d.case.describe(),
                    }
                    for d in tally.disagreements[:50]
                ],
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if tally.disagreements or tally.check_failures else 0


if __name__ == "__main__":
    sys.exit(main())
