"""Issue 16, kind 2: scheduling that fits a DaemonSet, with the scheduler's and DaemonSet controller's rules.

tests/integration/test_convert_owners.py checks the same reading against the real scheduler and
DaemonSet controller (a differential test over generated constraints).
"""

from pathlib import Path

import pytest
import yaml

from keybuzz_fix import config
from keybuzz_fix.cluster.convert import plan_convert
from keybuzz_fix.cluster.objects import parse_objects
from keybuzz_fix.cluster.observed import observed_from_objects
from keybuzz_fix.cluster.placement import Handover, fit_for_daemonset, left_out
from keybuzz_fix.cluster.rollout import not_held
from keybuzz_fix.cluster.scheduling import fits, host_ports, selector_matches, tolerates, why_not
from keybuzz_fix.inventory import Host

DATA = Path(__file__).parent.parent / "data"
CFG = config.load_config()
POD = "spec.template.spec"


def node(name, labels=None, taints=None):
    return {"kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": taints or []}}


def seed():
    return parse_objects((DATA / "cluster" / "keybuzz.yaml").read_text(), "keybuzz.yaml")


def nodes():
    return [d for d in yaml.safe_load_all((DATA / "cluster" / "nodes.yaml").read_text()) if d]


def api_pod(objs):
    return next(o for o in objs if o["metadata"]["name"] == "keybuzz-api" and o["kind"] == "Deployment")["spec"][
        "template"
    ]["spec"]


# -- the rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "toleration,taint,ok",
    [
        ({"operator": "Exists"}, {"key": "a", "value": "b", "effect": "NoExecute"}, True),  # empty key: every taint
        ({"key": "", "operator": "Exists", "effect": "NoSchedule"}, {"key": "a", "effect": "NoExecute"}, False),
        ({"key": "a", "operator": "Exists"}, {"key": "a", "value": "x", "effect": "NoSchedule"}, True),
        ({"key": "a", "value": "x"}, {"key": "a", "value": "x", "effect": "NoSchedule"}, True),  # no operator: Equal
        ({"key": "a", "operator": "Equal", "value": "y"}, {"key": "a", "value": "x", "effect": "NoSchedule"}, False),
        ({"key": "a", "operator": "Equal"}, {"key": "a", "effect": "NoSchedule"}, True),  # both values empty
        ({"key": "a", "operator": "Gt", "value": "1"}, {"key": "a", "value": "2", "effect": "NoSchedule"}, False),
        ({"key": "b", "operator": "Exists"}, {"key": "a", "effect": "NoSchedule"}, False),
    ],
)
def test_tolerates(toleration, taint, ok):
    assert tolerates(toleration, taint) is ok


@pytest.mark.parametrize(
    "value,op,wanted,ok",
    [
        ("8", "Gt", "4", True),
        ("+8", "Gt", "4", True),
        ("-3", "Lt", "0", True),
        ("4", "Gt", "4", False),
        (" 8", "Gt", "4", False),  # not an integer to Go's ParseInt
        ("8_0", "Gt", "4", False),
        ("8", "Gt", "four", False),
        ("2", "Lt", "4", True),
    ],
)
def test_gt_lt_read_integers_like_go(value, op, wanted, ok):
    spec = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "cores", "operator": op, "values": [wanted]}]}]
                }
            }
        }
    }
    assert fits(spec, node("n", {"cores": value})) is ok


def test_why_not_names_the_rule():
    n = node("w1", {"disk": "hdd"}, [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}])
    assert why_not({"nodeSelector": {"disk": "ssd"}}, n) == "nodeSelector disk=ssd: labelled disk=hdd"
    assert why_not({"nodeSelector": {"zone": "a"}}, n) == "nodeSelector zone=a: no label zone"
    assert why_not({}, n) == "taint gpu=yes:NoSchedule is not tolerated"
    terms = [
        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["w2"]}]},
        {},
    ]
    spec = {
        "tolerations": [{"operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}},
    }
    assert why_not(spec, n) == (
        "required node affinity: no term matches (term 0: disk In ['ssd']: labelled disk=hdd; "
        "term 1: metadata.name In ['w2']: Node w1; term 2: an empty term matches no node)"
    )
    terms.append({"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]})
    assert why_not(spec, n) is None  # terms are ORed


def test_daemonset_tolerations_are_the_controllers():
    cordoned = node("w", taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
    no_network = node("w", taints=[{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}])
    out_of_service = node("w", taints=[{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}])
    assert fits({}, cordoned, daemonset=True)
    assert fits({"hostNetwork": True}, no_network, daemonset=True)
    assert not fits({}, no_network, daemonset=True)  # only hostNetwork pods get that one
    assert not fits({"hostNetwork": True}, out_of_service, daemonset=True)
    assert fits({}, out_of_service)  # for collisions: assume a workload can come back on the node


def test_selector_matches():
    labels = {"app": "api", "tier": "web"}
    assert selector_matches({}, labels)
    assert not selector_matches(None, labels)
    assert selector_matches({"matchLabels": {"app": "api"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "api", "x": "y"}}, labels)
    assert selector_matches({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]}]}, labels)
    assert selector_matches({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["y"]}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "app", "operator": "Bogus"}]}, labels)


def test_host_ports_count_sidecars_not_plain_init_containers():
    spec = {
        "hostNetwork": True,
        "containers": [{"ports": [{"containerPort": 80}]}],
        "initContainers": [
            {"restartPolicy": "Always", "ports": [{"containerPort": 9901}]},
            {"ports": [{"containerPort": 7000}]},
        ],
    }
    assert {p.port for p in host_ports(spec)} == {80, 9901}


# -- fitting a template to a DaemonSet ---------------------------------------------------------------


def term(labels, key="kubernetes.io/hostname", **extra):
    return {"topologyKey": key, "labelSelector": {"matchLabels": labels}, **extra}


def test_required_self_anti_affinity_table_case_is_dropped_with_a_note():
    """Table case 4 (kubernetes/kubernetes#139135): a chart's "hard" anti-affinity preset."""
    path = DATA / "convert" / "25-required-anti-affinity" / "state.yaml"
    p = plan_convert(CFG, observed_from_objects(parse_objects(path.read_text(), str(path)), CFG))
    assert not p.refusals
    api = next(c.after for c in p.daemonsets if c.name == "keybuzz-api")
    affinity = api["spec"]["template"]["spec"]["affinity"]
    assert "podAntiAffinity" not in affinity and set(affinity) == {"nodeAffinity"}
    (note,) = [n for n in p.notes if "podAntiAffinity" in n]
    assert note.startswith(
        "keybuzz-api: spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0] "
        "(topologyKey kubernetes.io/hostname): self anti-affinity dropped"
    )


@pytest.mark.parametrize(
    "extra,own",
    [
        ({}, True),
        ({"namespaces": ["keybuzz", "other"]}, True),
        ({"namespaces": ["other"]}, False),
        ({"namespaceSelector": {}}, True),  # every namespace
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keybuzz"}}}, True),
        ({"namespaceSelector": {"matchLabels": {"team": "x"}}}, False),
    ],
)
def test_self_means_own_labels_in_own_namespace(extra, own):
    pod = {
        "affinity": {
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term({"app": "api"}, **extra)]}
        }
    }
    out = fit_for_daemonset(pod, {"app": "api"}, "keybuzz", POD)
    assert (len(out.notes), len(out.problems)) == ((1, 0) if own else (0, 1))
    assert ("affinity" in pod) is not own


def test_other_pods_required_affinity_and_hard_spread_are_refused_soft_ones_kept():
    pod = {
        "affinity": {
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term({"app": "cache"})]},
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": term({"app": "batch"})},
                    {"weight": 1, "podAffinityTerm": term({"app": "api"})},
                ]
            },
        },
        "topologySpreadConstraints": [
            {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "batch"}}},  # DoNotSchedule by default
            {
                "topologyKey": "zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app": "x"}},
            },
            {
                "topologyKey": "zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "api"}},
            },
        ],
    }
    out = fit_for_daemonset(pod, {"app": "api"}, "keybuzz", POD)
    assert [p.split(" (")[0] for p in out.problems] == [
        f"{POD}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]",
        f"{POD}.topologySpreadConstraints[0]",
    ]
    assert len(out.notes) == 2  # the self preferred anti-affinity and the self spread constraint
    assert [c["labelSelector"]["matchLabels"]["app"] for c in pod["topologySpreadConstraints"]] == ["batch", "x"]
    assert len(pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]) == 1


# -- the workers it would leave out -------------------------------------------------------------------


def host(name, ip):
    return Host(hostname=name, private_ip=ip, public_ip=None, user="root", env="prod", role="k3s", subrole="worker")


def test_left_out_groups_workers_by_reason():
    workers = [
        ("w1", node("w1", {"disk": "ssd"})),
        ("w2", node("w2")),
        ("w3", node("w3")),
        ("w4", node("w4", {"disk": "ssd"}, [{"key": "x", "effect": "NoExecute"}])),
    ]
    assert left_out({"nodeSelector": {"disk": "ssd"}}, workers) == {
        "nodeSelector disk=ssd: no label disk": ["w2", "w3"],
        "taint x:NoExecute is not tolerated": ["w4"],
    }


def test_plan_names_the_servers_tsv_worker_it_would_leave_out():
    objs = seed()
    api_pod(objs)["nodeSelector"] = {"kubernetes.io/hostname": "k8s-worker-01"}
    workers = [host("k8s-worker-01", "198.18.0.11"), host("worker-two", "198.18.0.12"), host("gone", "10.9.9.9")]
    observed = observed_from_objects(objs + nodes(), CFG, workers)
    planned = plan_convert(CFG, observed)
    (refusal,) = planned.refusals
    assert planned.warnings[-1] == (
        "worker gone of servers.tsv is no Node of the cluster (by name or InternalIP): whether the DaemonSets "
        "reach it is not checked"
    )
    assert refusal == (
        "keybuzz-api: its DaemonSet would leave out worker(s) worker-two (Node k8s-worker-02) (servers.tsv): "
        "nodeSelector kubernetes.io/hostname=k8s-worker-01: labelled kubernetes.io/hostname=k8s-worker-02; "
        "the app must run on every worker: widen or remove that constraint"
    )
    # Without servers.tsv, the cluster's own workers are the ones to reach.
    refusals = plan_convert(CFG, observed_from_objects(objs + nodes(), CFG)).refusals
    assert [r.split(" (the cluster")[0] for r in refusals] == [
        f"keybuzz-api: its DaemonSet would leave out worker(s) k8s-worker-0{i}" for i in range(2, 6)
    ]


def test_a_taint_on_one_worker_leaves_out_the_app_that_does_not_tolerate_it():
    objs = seed()
    workers = nodes()
    next(n for n in workers if n["metadata"]["name"] == "k8s-worker-03")["spec"]["taints"] = [
        {"key": "dedicated", "value": "batch", "effect": "NoSchedule"}
    ]
    api_pod(objs)["tolerations"] = [{"key": "dedicated", "operator": "Exists"}]
    (refusal,) = plan_convert(CFG, observed_from_objects(objs + workers, CFG)).refusals
    assert refusal.startswith("keybuzz-front: its DaemonSet would leave out worker(s) k8s-worker-03")
    assert "taint dedicated=batch:NoSchedule is not tolerated" in refusal


# -- the handover: the Deployment's own pods hold the DaemonSet's off their nodes ------------------


def test_plan_hands_over_when_the_deployment_keeps_a_self_anti_affinity():
    path = DATA / "convert" / "25-required-anti-affinity" / "state.yaml"
    p = plan_convert(CFG, observed_from_objects(parse_objects(path.read_text(), str(path)), CFG))
    assert p.handovers == (
        Handover("keybuzz-api", "keybuzz-api", (("app", "keybuzz-api"),), ("kubernetes.io/hostname",)),
    )
    assert any("switches over once the DaemonSet's other pods are ready" in n for n in p.notes)
    assert plan_convert(CFG, observed_from_objects(seed(), CFG)).handovers == ()


class PodsAndNodes:
    """Just enough of the API for not_held: pods by label selector, and nodes."""

    def __init__(self, pods, nodes):
        self.pods, self.nodes = pods, nodes

    def list(self, kind, namespace=None, selector=None):
        if kind == "Node":
            return self.nodes
        wanted = dict(part.split("=") for part in selector.split(",")) if selector else {}
        return [p for p in self.pods if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]


def pod(name, labels, owner, node=None, ready=False, target=None):
    spec = {"nodeName": node} if node else {}
    if target:
        field = {"key": "metadata.name", "operator": "In", "values": [target]}
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [field]}]}
            }
        }
    return {
        "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
        "spec": spec,
        "status": {"phase": "Running" if ready else "Pending", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def test_not_held_tells_pods_held_by_the_deployment_from_pods_stuck_otherwise():
    labels = {"app": "keybuzz-api"}
    ds = {"metadata": {"name": "keybuzz-api", "uid": "ds"}, "spec": {"selector": {"matchLabels": labels}}}
    mine = {"kind": "DaemonSet", "uid": "ds"}
    rs = {"kind": "ReplicaSet", "name": "keybuzz-api-7d9f", "uid": "rs"}
    workers = [node(f"w{i}", {"kubernetes.io/hostname": f"w{i}"}) for i in range(1, 6)]
    pods = [
        pod("ds-1", labels, mine, "w1", ready=True),
        pod("ds-2", labels, mine, "w2", ready=True),
        pod("ds-4", labels, mine, target="w4"),
        pod("ds-5", labels, mine, target="w5"),
        pod("old-a", labels, rs, "w4", ready=True),
        pod("old-b", labels, rs, "w5", ready=True),
        pod("ds-3", labels, mine, "w3"),  # scheduled, not ready: something else is wrong
    ]
    held = Handover("keybuzz-api", "keybuzz-api", (("app", "keybuzz-api"),), ("kubernetes.io/hostname",))
    assert not_held(PodsAndNodes(pods, workers), "keybuzz", ds, held) == ["ds-3"]
    assert not_held(PodsAndNodes(pods[:-1], workers), "keybuzz", ds, held) == []
    assert not_held(PodsAndNodes(pods[:-2], workers), "keybuzz", ds, held) == ["ds-5"]  # old-b is gone
    # A zone topology key holds off every node of a zone where an old pod runs.
    zone = Handover("keybuzz-api", "keybuzz-api", (("app", "keybuzz-api"),), ("zone",))
    zoned = [node(f"w{i}", {"zone": "a" if i < 4 else "b"}) for i in range(1, 6)]
    assert not_held(PodsAndNodes(pods[:-2], zoned), "keybuzz", ds, zone) == []  # old-a on w4 holds zone b: w5 too
