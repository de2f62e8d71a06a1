import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keybuzz_fix import config
from keybuzz_fix.checks import scorecard as sc
from keybuzz_fix.checks.http import HttpAnswer, HttpRound
from keybuzz_fix.checks.scorecard import Row, Scorecard, ScoredCheck
from keybuzz_fix.cli import app
from keybuzz_fix.cluster import ingress
from keybuzz_fix.errors import ExitCode
from keybuzz_fix.hosts.reach import Paths, Reach, targets_for
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.scorecard import scorecard_json, scorecard_junit

ROOT = Path(__file__).parent.parent.parent
SEED = ROOT / "tests" / "data" / "cluster"
EXAMPLE = ROOT / "servers.tsv.example"
WORKERS = [f"k8s-worker-0{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def cfg() -> config.Config:
    return config.load_config()


@pytest.fixture(scope="module")
def seeded() -> dict[tuple[str, str], dict]:
    docs = [d for f in ("keybuzz.yaml", "ingress-nginx.yaml") for d in yaml.safe_load_all((SEED / f).read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def pod(name: str, owner: str, node: str, phase: str = "Running", ready: bool = True) -> dict:
    return {
        "metadata": {"name": name, "ownerReferences": [{"kind": "DaemonSet", "name": owner, "controller": True}]},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def daemonset_from(deployment: dict, host_network: bool = True) -> dict:
    ds = copy.deepcopy(deployment)
    ds["kind"] = "DaemonSet"
    ds["spec"]["template"]["spec"]["hostNetwork"] = host_network
    return ds


def nodeport(service: dict, node_port: int) -> dict:
    svc = copy.deepcopy(service)
    svc["spec"]["type"] = "NodePort"
    svc["spec"]["ports"][0]["nodePort"] = node_port
    return svc


NGINX_CLASS = {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}


def serving(services: dict, ingresses: list | tuple = ()) -> ingress.ServingFacts:
    keyed = {f"keybuzz/{n}": {**s, "metadata": {**s["metadata"], "namespace": "keybuzz"}} for n, s in services.items()}
    return ingress.ServingFacts(tuple(ingresses), (NGINX_CLASS,), keyed, frozenset())


def answer(url: str, status: int | None, reason: str = "OK") -> HttpAnswer:
    return HttpAnswer(url, status, reason, 1 if status == 200 else 3, 0.1, "198.18.0.40:443")


# -- the checks, on the seeded (pre-conversion) objects and on converted ones -----------------------


def test_pre_conversion_state_fails_with_evidence(cfg: config.Config, seeded: dict) -> None:
    deployments = {n: seeded[("Deployment", n)] for n in ("keybuzz-api", "keybuzz-front")}
    services = {n: seeded[("Service", n)] for n in ("keybuzz-api", "keybuzz-front")}
    c1 = sc.check_daemonsets(cfg, {}, deployments)
    assert not c1.passed
    assert c1.detail == (
        "keybuzz-api: no DaemonSet (still a Deployment); keybuzz-front: no DaemonSet (still a Deployment)"
    )
    c2 = sc.check_pods(cfg, {}, [], 5)
    assert c2.detail == "keybuzz-api: 0/5 (no DaemonSet); keybuzz-front: 0/5 (no DaemonSet)"
    c3 = sc.check_host_network(cfg, {}, deployments)
    assert "keybuzz-api: no DaemonSet; the Deployment has hostNetwork off" in c3.detail
    c5 = sc.check_services(cfg, services)
    assert not c5.passed
    assert c5.detail == (
        "keybuzz-api: ClusterIP (expected NodePort 30080); keybuzz-front: ClusterIP (expected NodePort 30000)"
    )
    c6 = sc.check_ingresses(cfg, {}, serving(services))
    assert c6.detail == "keybuzz-front-ingress: not found; keybuzz-api-ingress: not found"
    ds = seeded[("DaemonSet", "ingress-nginx-controller")]
    c4 = sc.check_ingress_controller(cfg, ds, None, [pod(f"i{n}", "ingress-nginx-controller", n) for n in WORKERS], 5)
    assert c4.passed and c4.detail == "DaemonSet found; hostNetwork on; 5/5 pods Running"


def test_converted_state_passes(cfg: config.Config, seeded: dict) -> None:
    daemonsets = {n: daemonset_from(seeded[("Deployment", n)]) for n in ("keybuzz-api", "keybuzz-front")}
    pods = [pod(f"{app}-{n}", app, n) for app in daemonsets for n in WORKERS]
    services = {
        "keybuzz-api": nodeport(seeded[("Service", "keybuzz-api")], 30080),
        "keybuzz-front": nodeport(seeded[("Service", "keybuzz-front")], 30000),
    }
    ingresses = {o["metadata"]["name"]: o for o in ingress.build_ingresses(cfg)}
    assert sc.check_daemonsets(cfg, daemonsets, {}).passed
    c2 = sc.check_pods(cfg, daemonsets, pods, 5)
    assert c2.passed and c2.detail == "keybuzz-api: 5/5 Running and Ready; keybuzz-front: 5/5 Running and Ready"
    c3 = sc.check_host_network(cfg, daemonsets, {})
    assert c3.passed and c3.detail == "keybuzz-api: hostNetwork on; keybuzz-front: hostNetwork on"
    c5 = sc.check_services(cfg, services)
    assert c5.passed and c5.detail == "keybuzz-api: NodePort 80→30080; keybuzz-front: NodePort 80→30000"
    c6 = sc.check_ingresses(cfg, ingresses, serving(services, list(ingresses.values())))
    assert c6.passed
    assert c6.detail == (
        "keybuzz-front-ingress: platform.keybuzz.io → keybuzz-front:80, served; "
        "keybuzz-api-ingress: platform-api.keybuzz.io → keybuzz-api:80, served"
    )
    older = copy.deepcopy(ingresses["keybuzz-front-ingress"])
    older["metadata"].update(namespace="legacy", name="old-front", creationTimestamp="2024-01-01T00:00:00Z")
    ingresses["keybuzz-front-ingress"]["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    c6 = sc.check_ingresses(cfg, ingresses, serving(services, [*ingresses.values(), older]))
    assert not c6.passed
    assert c6.detail.startswith(
        "keybuzz-front-ingress: platform.keybuzz.io → keybuzz-front:80 not served: Ingress legacy/old-front: "
        "already serves platform.keybuzz.io / (Prefix), created 2024-01-01T00:00:00Z, before "
        "keybuzz/keybuzz-front-ingress"
    )
    assert c6.detail.endswith("keybuzz-api-ingress: platform-api.keybuzz.io → keybuzz-api:80, served")


def test_n_is_the_number_of_workers_not_five(cfg: config.Config, seeded: dict) -> None:
    daemonsets = {n: daemonset_from(seeded[("Deployment", n)]) for n in ("keybuzz-api", "keybuzz-front")}
    pods = [pod(f"{app}-{n}", app, n) for app in daemonsets for n in WORKERS]
    assert sc.check_pods(cfg, daemonsets, pods, 5).passed
    c = sc.check_pods(cfg, daemonsets, pods, 7)
    assert not c.passed and "keybuzz-api: 5/7 Running and Ready" in c.detail and "≥ 7" in c.name
    assert sc.check_pods(cfg, daemonsets, pods, 3).passed


def test_pods_must_be_running_and_ready(cfg: config.Config, seeded: dict) -> None:
    daemonsets = {n: daemonset_from(seeded[("Deployment", n)]) for n in ("keybuzz-api", "keybuzz-front")}
    pods = [pod(f"keybuzz-front-{n}", "keybuzz-front", n) for n in WORKERS]
    pods += [pod(f"keybuzz-api-{n}", "keybuzz-api", n) for n in WORKERS[:3]]
    pods += [
        pod("keybuzz-api-p", "keybuzz-api", WORKERS[3], "Pending"),
        pod("keybuzz-api-r", "keybuzz-api", WORKERS[4], ready=False),
    ]
    c = sc.check_pods(cfg, daemonsets, pods, 5)
    assert not c.passed
    assert c.detail.startswith("keybuzz-api: 3/5 Running and Ready (keybuzz-api-p Pending, keybuzz-api-r not Ready)")


def test_mismatches_are_named(cfg: config.Config, seeded: dict) -> None:
    daemonsets = {"keybuzz-api": daemonset_from(seeded[("Deployment", "keybuzz-api")], host_network=False)}
    c3 = sc.check_host_network(cfg, daemonsets, {})
    assert c3.detail == "keybuzz-api: hostNetwork off; keybuzz-front: no DaemonSet"
    services = {"keybuzz-api": nodeport(seeded[("Service", "keybuzz-api")], 30999)}
    assert sc.check_services(cfg, services).detail == (
        "keybuzz-api: NodePort, nodePort 30999 (expected NodePort 30080); keybuzz-front: no Service"
    )
    wrong = copy.deepcopy(ingress.build_ingresses(cfg))
    wrong[1]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = {"number": 8080}
    c6 = sc.check_ingresses(cfg, {o["metadata"]["name"]: o for o in wrong}, serving(services))
    assert not c6.passed
    assert (
        "keybuzz-api-ingress: platform-api.keybuzz.io → keybuzz-api:8080 "
        "(expected platform-api.keybuzz.io → keybuzz-api:80)"
    ) in c6.detail
    ds = copy.deepcopy(seeded[("DaemonSet", "ingress-nginx-controller")])
    ds["spec"]["template"]["spec"]["hostNetwork"] = False
    c4 = sc.check_ingress_controller(cfg, ds, None, [pod("a", "ingress-nginx-controller", WORKERS[0])], 5)
    assert not c4.passed and c4.detail == "DaemonSet found; hostNetwork off; 1/5 pods Running"
    c4 = sc.check_ingress_controller(cfg, None, {"kind": "Deployment"}, [], 5)
    assert c4.detail == "ingress-nginx/ingress-nginx-controller: a Deployment, not a DaemonSet"


def test_url_check_shows_status_or_error(cfg: config.Config) -> None:
    c = sc.check_urls(
        cfg,
        [
            answer("https://platform.keybuzz.io", 504, "Gateway Time-out"),
            answer("https://platform-api.keybuzz.io", None, "connection refused"),
        ],
    )
    assert not c.passed
    assert "https://platform.keybuzz.io: 504 Gateway Time-out via 198.18.0.40:443 (3 attempts" in c.detail
    assert "https://platform-api.keybuzz.io: error: connection refused" in c.detail
    ok = sc.check_urls(
        cfg, [answer("https://platform.keybuzz.io", 200), answer("https://platform-api.keybuzz.io", 200)]
    )
    assert ok.passed and ok.name == "Both URLs answer HTTP 200 to every request"
    assert not sc.check_urls(cfg, []).passed


def rounds(url: str, *statuses: int | None) -> HttpRound:
    answers = tuple(
        answer(url, s, "OK" if s == 200 else "timed out after 4 s" if s is None else "Gateway Time-out")
        for s in statuses
    )
    return HttpRound(url, answers, 2, 8.4, "198.18.0.40:443")


def test_the_url_check_passes_only_when_every_request_of_the_round_answers(cfg: config.Config) -> None:
    """One worker's broken path fails some requests of a round: that is a failure, not an average."""
    front, api = "https://platform.keybuzz.io", "https://platform-api.keybuzz.io"
    partly = sc.check_urls(cfg, [rounds(front, *[200] * 8, None, 504), rounds(api, *[200] * 10)])
    assert not partly.passed
    assert (
        f"{front}: 8/10 answered 200 via 198.18.0.40:443; 1 × 504 Gateway Time-out, "
        "1 × error: timed out after 4 s (2 rounds, 8.4 s)"
    ) in partly.detail
    assert f"{api}: 10/10 answered 200 via 198.18.0.40:443 (2 rounds" in partly.detail
    assert sc.check_urls(cfg, [rounds(front, *[200] * 10), rounds(api, *[200] * 10)]).passed
    assert not sc.check_urls(cfg, [rounds(front), rounds(api, 200)]).passed  # no answer is no pass


WORKER_NAMES = [f"k8s-worker-0{i}" for i in range(1, 4)]
PORTS = [(80, "ingress-nginx HTTP host port"), (8080, "keybuzz-api host port")]


def paths(source: str, outcome: dict[tuple[str, int], Reach] | None = None) -> Paths:
    hosts = [Host(n, f"198.18.0.1{i}", None, "root", "prod", "k3s", "worker") for i, n in enumerate(WORKER_NAMES, 1)]
    me = next(h for h in hosts if h.hostname == source)
    targets = targets_for(me, hosts, PORTS)
    got = outcome or {}
    return Paths(source, tuple((t, got.get((t.host, t.port), Reach.OPEN), "") for t in targets))


def test_the_paths_between_workers_pass_only_when_every_one_is_open(cfg: config.Config) -> None:
    ok = sc.check_paths(cfg, WORKER_NAMES, [paths(n) for n in WORKER_NAMES], {}, [80, 8080])
    assert ok.passed and ok.detail == "12/12 paths open, from every worker to every other"
    assert ok.name == "Ingress and app host ports open between workers (80, 8080)"


def test_a_worker_whose_app_port_is_closed_is_named(cfg: config.Config) -> None:
    closed = {("k8s-worker-02", 8080): Reach.TIMEOUT}
    c = sc.check_paths(cfg, WORKER_NAMES, [paths(n, closed) for n in WORKER_NAMES], {}, [80, 8080])
    assert not c.passed
    assert c.detail == (
        "2/12 paths fail: 8080 (keybuzz-api host port) timed out on 2 of 6 paths: "
        "to k8s-worker-02 from every other worker"
    )


def test_one_pair_and_an_unreachable_worker_are_named(cfg: config.Config) -> None:
    seen = [paths("k8s-worker-01", {("k8s-worker-03", 80): Reach.REFUSED}), paths("k8s-worker-02")]
    c = sc.check_paths(cfg, WORKER_NAMES, seen, {"k8s-worker-03": "SSH: connection timed out"}, [80, 8080])
    assert not c.passed
    assert "80 (ingress-nginx HTTP host port) refused on 1 of 4 paths: k8s-worker-01 → k8s-worker-03" in c.detail
    assert "cannot check from k8s-worker-03: SSH: connection timed out" in c.detail


def test_an_untested_path_is_no_pass(cfg: config.Config) -> None:
    untested = {(n, p): Reach.UNTESTED for n in WORKER_NAMES for p in (80, 8080)}
    c = sc.check_paths(cfg, WORKER_NAMES, [paths(n, untested) for n in WORKER_NAMES], {}, [80, 8080])
    assert not c.passed and "untested on 6 of 6 paths: between every pair of workers" in c.detail


def test_check_names_are_the_issue_list(cfg: config.Config) -> None:
    assert [sc.check_name(i, cfg, 5) for i in range(1, 9)] == [
        "DaemonSets keybuzz-api and keybuzz-front exist",
        "Each DaemonSet has ≥ 5 Running and Ready pods (N = workers)",
        "Both pod templates have hostNetwork on",
        "ingress-nginx ingress-nginx/ingress-nginx-controller: DaemonSet, hostNetwork, ≥ 5 Running pods",
        "Services keybuzz-api and keybuzz-front are NodePort (30080 / 30000)",
        "Ingresses keybuzz-front-ingress and keybuzz-api-ingress exist and point at the Services",
        "Both URLs answer HTTP 200 to every request",
        "Ingress and app host ports open between workers",
    ]


# -- score, threshold, exit codes --------------------------------------------------------------------


def card(passed: int, total: int = 7, **kwargs: object) -> Scorecard:
    checks = tuple(ScoredCheck(i + 1, f"check {i + 1}", i < passed, "evidence") for i in range(total))
    return Scorecard(checks, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("passed", "total", "threshold", "strict", "ok"),
    [
        (7, 7, 80, False, True),
        (6, 7, 80, False, True),  # 85.7 %
        (5, 7, 80, False, False),  # 71.4 %
        (4, 5, 80, False, True),  # exactly the threshold passes
        (6, 7, 90, False, False),
        (6, 7, 80, True, False),  # --strict wants 100 %
        (7, 7, 80, True, True),
        (0, 7, 0, False, True),
        (0, 0, 0, False, False),  # nothing checked never passes
    ],
)
def test_score_and_threshold(passed: int, total: int, threshold: int, strict: bool, ok: bool) -> None:
    c = card(passed, total, threshold=threshold, strict=strict)
    assert c.ok is ok
    assert int(ExitCode.of(c)) == (0 if ok else 1)


def test_score_math() -> None:
    c = card(6)
    assert (c.passed, c.total, round(c.score, 1), c.perfect) == (6, 7, 85.7, False)
    assert card(7).perfect and card(7, strict=True).required == 100


def test_json_output() -> None:
    c = card(
        5,
        extended=(Row("k8s-worker-01", "NodePort 31695 reachable from here", False, "timeout"),),
        workers=5,
        seconds=1.23456,
    )
    data = scorecard_json(c)
    assert data["score"] == 71.4 and data["threshold"] == 80 and data["ok"] is False and data["exit_code"] == 1
    assert [c["status"] for c in data["checks"]] == ["pass"] * 5 + ["fail"] * 2
    assert set(data["checks"][0]) == {"number", "name", "status", "detail", "seconds"}
    assert data["extended"] == [
        {"host": "k8s-worker-01", "check": "NodePort 31695 reachable from here", "status": "fail", "detail": "timeout"}
    ]
    json.dumps(data)


def test_junit_output() -> None:
    c = card(5, extended=(Row("k8s-worker-01", "UFW rules present", True, "2/2 rules present"),), seconds=2.5)
    root = ET.fromstring(scorecard_junit(c).split("\n", 1)[1])
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["scorecard", "extended (not scored)"]
    cases = suites[0].findall("testcase")
    assert len(cases) == 7 and suites[0].get("tests") == "7" and suites[0].get("failures") == "2"
    assert [case.find("failure") is not None for case in cases] == [False] * 5 + [True] * 2
    assert cases[6].find("failure").get("message") == "evidence"
    props = {p.get("name"): p.get("value") for p in suites[0].find("properties")}
    assert props["score"] == "71.4" and props["threshold"] == "80" and props["result"] == "fail"
    assert suites[1].find("testcase").get("classname") == "keybuzz-fix.extended.k8s-worker-01"


def test_junit_escapes_evidence() -> None:
    checks = (ScoredCheck(1, 'a <b> & "c"', False, "error: <html> & ']]>'"),)
    xml = scorecard_junit(Scorecard(checks))
    assert ET.fromstring(xml.split("\n", 1)[1]).find("testsuite/testcase/failure").text == "error: <html> & ']]>'"


# -- command-line values, refused before anything is reached -----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resolve", "platform.keybuzz.io:443"], "expected HOST:PORT:ADDR"),
        (["--resolve", "platform.keybuzz.io:https:10.0.0.2"], "is not a port number"),
        (["--resolve", "platform.keybuzz.io:443:lb.example"], "is not an IP address"),
        (["--resolve", "platform.keybuzz.io:80:10.0.0.2"], "matches none of the URLs checked"),
        (["--insecure", "--ca-file", "ca.pem"], "--insecure and --ca-file exclude each other"),
        (["--ca-file", "/nonexistent/ca.pem"], "--ca-file /nonexistent/ca.pem: no such file"),
        (["--threshold", "101"], "--threshold must be between 0 and 100"),
        (["--url-timeout", "0"], "--url-timeout must be more than 0"),
        (["--retries", "-1"], "--retries must be between 0 and 10"),
        (["--concurrency", "0", "--extended"], "--concurrency must be between 1 and 512"),
        (["--timeout", "-1"], "--timeout must be more than 0 seconds"),
    ],
)
def test_bad_values_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["validate", str(EXAMPLE), "--kubeconfig", "/nonexistent", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_kubeconfig_is_one_line() -> None:
    result = CliRunner().invoke(app, ["validate", str(EXAMPLE), "--kubeconfig", "/nonexistent/kubeconfig"])
    assert result.exit_code == 2
    assert result.output.strip() == "keybuzz-fix: error: --kubeconfig /nonexistent/kubeconfig: no such file"


def test_help_lists_the_new_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "ingress" in result.output and "validate" in result.output
    for command in ("ingress", "validate"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output
