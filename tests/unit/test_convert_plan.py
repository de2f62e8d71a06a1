"""Pure planning of convert: the DaemonSet built from a Deployment, the Service switch, the HPAs,
refusals, warnings, and the plan against converted and half-converted states."""

import copy
import dataclasses
import datetime as dt
from pathlib import Path

import pytest
import yaml

from keybuzz_fix import config
from keybuzz_fix.cluster.changes import Verb
from keybuzz_fix.cluster.convert import plan_convert
from keybuzz_fix.cluster.daemonset import daemonset_for
from keybuzz_fix.cluster.objects import MANAGED_BY, is_subset, parse_objects
from keybuzz_fix.cluster.observed import Observed, OverlaySeen, observed_from_objects, overlay_seen
from keybuzz_fix.report.changes import offline_json

DATA = Path(__file__).parent.parent / "data"
CFG = config.load_config()
API, FRONT = CFG.app("keybuzz-api"), CFG.app("keybuzz-front")
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"


def seed_objects():
    return parse_objects((DATA / "cluster" / "keybuzz.yaml").read_text(), "keybuzz.yaml")


def seed_state(extra=(), nodes=None):
    objs = seed_objects() + list(extra)
    if nodes is not None:
        objs += nodes
    return observed_from_objects(objs, CFG)


def by_name(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def nodes():
    return [d for d in yaml.safe_load_all((DATA / "cluster" / "nodes.yaml").read_text()) if d]


def converted_state(plan, state):
    """What the cluster looks like after the plan ran (the server adds status and defaults)."""
    ds = [
        dict(copy.deepcopy(c.after), metadata={**c.after["metadata"], "uid": "ds-uid"}, status={"numberReady": 5})
        for c in plan.daemonsets
    ]
    services = [c.after for c in plan.services]
    return Observed(
        state.namespace,
        deployments=[],
        daemonsets=ds,
        statefulsets=[],
        services=services,
        hpas=[],
        nodes=state.nodes,
        service_cidr=state.service_cidr,
    )


def test_template_is_carried_over_unchanged_but_for_host_networking():
    deployments = by_name(seed_objects(), "Deployment")
    service = by_name(seed_objects(), "Service")["keybuzz-api"]
    ds, host_port, _ = daemonset_for(deployments["keybuzz-api"], API, service)
    assert host_port == 8080
    original = copy.deepcopy(deployments["keybuzz-api"]["spec"]["template"])
    got = copy.deepcopy(ds["spec"]["template"])
    # Undo exactly what the conversion is allowed to change; the rest must be byte-for-byte equal.
    spec = got["spec"]
    assert spec.pop("hostNetwork") is True
    assert spec.pop("dnsPolicy") == "ClusterFirstWithHostNet"
    assert spec.pop("affinity") == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": CONTROL_PLANE, "operator": "DoesNotExist"}]}]
            }
        }
    }
    assert got["metadata"]["labels"].pop(MANAGED_BY) == "keybuzz-fix"
    container = spec["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "hostPort": 8080, "protocol": "TCP"}]
    container["ports"] = [{"name": "http", "containerPort": 3001, "protocol": "TCP"}]
    assert container["env"][0] == {"name": "PORT", "value": "8080"}
    container["env"][0]["value"] = "3001"
    assert got == original
    assert container["image"] == "ghcr.io/keybuzz/keybuzz-api:1.4.2"  # never a placeholder
    assert container["livenessProbe"]["httpGet"]["port"] == "http"  # named: follows the moved port


def test_daemonset_shape():
    deployments = by_name(seed_objects(), "Deployment")
    service = by_name(seed_objects(), "Service")["keybuzz-front"]
    ds, host_port, notes = daemonset_for(deployments["keybuzz-front"], FRONT, service)
    assert host_port == 3000 and notes == []  # already listening on its host port: nothing to rewrite
    assert ds["kind"] == "DaemonSet" and ds["apiVersion"] == "apps/v1"
    assert ds["metadata"] == {
        "name": "keybuzz-front",
        "namespace": "keybuzz",
        "labels": {"app": "keybuzz-front", MANAGED_BY: "keybuzz-fix"},
    }
    assert ds["spec"]["selector"] == {"matchLabels": {"app": "keybuzz-front"}}
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert "replicas" not in ds["spec"] and "strategy" not in ds["spec"] and "status" not in ds
    assert "tolerations" not in ds["spec"]["template"]["spec"]  # never a blanket toleration


def test_numeric_probes_lifecycle_and_affinity_terms():
    objs = parse_objects((DATA / "convert" / "03-numeric-probes-affinity" / "state.yaml").read_text(), "03")
    deployment = by_name(objs, "Deployment")["keybuzz-api"]
    ds, _, notes = daemonset_for(deployment, API, by_name(objs, "Service")["keybuzz-api"])
    api = ds["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["port"] == 8080
    assert api["readinessProbe"]["tcpSocket"]["port"] == 8080
    assert api["startupProbe"]["httpGet"]["port"] == 9090  # another port: left alone
    assert api["lifecycle"]["preStop"]["httpGet"]["port"] == 8080
    assert api["ports"][1] == {"name": "metrics", "containerPort": 9090}
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert len(terms) == 2
    assert all(t["matchExpressions"][-1] == {"key": CONTROL_PLANE, "operator": "DoesNotExist"} for t in terms)
    assert ds["spec"]["template"]["spec"]["tolerations"] == deployment["spec"]["template"]["spec"]["tolerations"]
    assert ds["spec"]["minReadySeconds"] == 5
    assert ds["metadata"]["annotations"] == {"team": "platform"}  # the revision annotation is the server's
    assert any("livenessProbe port 3001 → 8080" in n for n in notes)
    # Converting the DaemonSet's own template again changes nothing (no duplicate expression).
    again, _, _ = daemonset_for(
        dict(deployment, spec=dict(deployment["spec"], template=ds["spec"]["template"])),
        API,
        {"metadata": {"name": "keybuzz-api"}, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}},
    )
    assert again["spec"]["template"]["spec"]["affinity"] == ds["spec"]["template"]["spec"]["affinity"]


def test_keep_port_uses_the_app_port_and_leaves_env_alone():
    plan = plan_convert(CFG, seed_state(), keep_port=True)
    assert not plan.refusals
    api = next(c.after for c in plan.daemonsets if c.name == "keybuzz-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == container["ports"][0]["hostPort"] == 3001
    assert container["env"][0] == {"name": "PORT", "value": "3001"}
    svc = next(c.after for c in plan.services if c.name == "keybuzz-api")
    assert svc["spec"]["ports"][0]["targetPort"] == 3001 and svc["spec"]["ports"][0]["nodePort"] == 30080


def test_full_plan_order_and_preconditions():
    objs = seed_objects()
    for i, o in enumerate(objs):
        o["metadata"]["uid"] = f"uid-{i}"
        o["metadata"]["resourceVersion"] = str(100 + i)
    plan = plan_convert(CFG, observed_from_objects(objs, CFG))
    assert not plan.refusals
    assert [(c.label, c.kind, c.name) for c in plan.changes] == [
        ("create", "DaemonSet", "keybuzz-api"),
        ("create", "DaemonSet", "keybuzz-front"),
        ("patch", "Service", "keybuzz-api"),
        ("patch", "Service", "keybuzz-front"),
        ("delete", "HorizontalPodAutoscaler", "keybuzz-api"),
        ("delete", "HorizontalPodAutoscaler", "keybuzz-front"),
        ("delete", "Deployment", "keybuzz-api"),
        ("delete", "Deployment", "keybuzz-front"),
    ]
    deletes = [c for c in plan.changes if c.verb is Verb.DELETE]
    assert all(c.uid and c.uid.startswith("uid-") for c in deletes)
    patch = plan.services[0].body
    assert patch["metadata"]["resourceVersion"].isdigit()
    assert patch["spec"] == {
        "type": "NodePort",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}],
    }
    backed_up = {(o["kind"], o["metadata"]["name"]) for o in plan.to_back_up}
    assert backed_up == {
        (k, n) for k in ("Service", "HorizontalPodAutoscaler", "Deployment") for n in ("keybuzz-api", "keybuzz-front")
    }


def test_hpas_are_found_by_target_not_by_name():
    objs = parse_objects((DATA / "convert" / "03-numeric-probes-affinity" / "state.yaml").read_text(), "03")
    plan = plan_convert(CFG, observed_from_objects(objs, CFG))
    assert sorted(c.name for c in plan.hpas) == ["api-autoscaler", "keybuzz-api-legacy"]


def test_plan_after_conversion_is_empty():
    state = seed_state(nodes=nodes())
    plan = plan_convert(CFG, state)
    again = plan_convert(CFG, converted_state(plan, state))
    assert not again.refusals
    assert again.pending == []


def test_half_converted_state_plans_only_the_rest():
    state = seed_state(nodes=nodes())
    plan = plan_convert(CFG, state)
    half = Observed(
        state.namespace,
        deployments=state.deployments,
        daemonsets=converted_state(plan, state).daemonsets,
        statefulsets=[],
        services=[plan.services[0].after, state.one(state.services, "keybuzz-front")],
        hpas=state.hpas,
        nodes=state.nodes,
        service_cidr=state.service_cidr,
    )
    rest = plan_convert(CFG, half)
    assert not rest.refusals
    assert [(c.label, c.kind, c.name) for c in rest.pending] == [
        ("patch", "Service", "keybuzz-front"),
        ("delete", "HorizontalPodAutoscaler", "keybuzz-api"),
        ("delete", "HorizontalPodAutoscaler", "keybuzz-front"),
        ("delete", "Deployment", "keybuzz-api"),
        ("delete", "Deployment", "keybuzz-front"),
    ]
    assert [c.verb for c in rest.daemonsets] == [Verb.NONE, Verb.NONE]


def test_daemonset_someone_changed_is_updated():
    state = seed_state()
    plan = plan_convert(CFG, state)
    changed = copy.deepcopy(converted_state(plan, state).daemonsets)
    changed[0]["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = 2
    rest = plan_convert(
        CFG, Observed(state.namespace, state.deployments, changed, [], state.services, state.hpas, None)
    )
    assert [c.label for c in rest.daemonsets] == ["update", "unchanged"]
    assert rest.daemonsets[0].before is changed[0]  # backed up before it is changed


def test_refuses_a_port_that_cannot_move_and_keep_port_is_the_way_out():
    objs = seed_objects()
    api = by_name(objs, "Deployment")["keybuzz-api"]
    api["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "NODE_ENV", "value": "production"}]
    plan = plan_convert(CFG, observed_from_objects(objs, CFG))
    assert len(plan.refusals) == 1
    assert "keybuzz-api" in plan.refusals[0] and "no PORT variable" in plan.refusals[0]
    assert "--keep-port" in plan.refusals[0]
    assert not plan_convert(CFG, observed_from_objects(objs, CFG), keep_port=True).refusals


def test_refuses_a_port_variable_that_disagrees_with_the_container_port():
    objs = seed_objects()
    by_name(objs, "Deployment")["keybuzz-api"]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "5000"
    (refusal,) = plan_convert(CFG, observed_from_objects(objs, CFG)).refusals
    assert "'5000'" in refusal and "3001" in refusal


def test_refuses_a_container_port_entry_without_its_number():
    objs = seed_objects()
    by_name(objs, "Deployment")["keybuzz-api"]["spec"]["template"]["spec"]["containers"][0]["ports"] = [{}]
    (refusal,) = plan_convert(CFG, observed_from_objects(objs, CFG)).refusals
    assert "keybuzz-api" in refusal and "without a containerPort" in refusal


def test_port_variable_named_in_config(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "apps:\n  - {name: keybuzz-api, host_port: 8080, node_port: 30080, port_env: LISTEN}\n"
        "  - {name: keybuzz-front, host_port: 3000, node_port: 30000}\n"
    )
    cfg = config.load_config(cfg_file)
    objs = seed_objects()
    env = by_name(objs, "Deployment")["keybuzz-api"]["spec"]["template"]["spec"]["containers"][0]["env"]
    env[0]["name"] = "LISTEN"
    plan = plan_convert(cfg, observed_from_objects(objs, cfg))
    assert not plan.refusals
    container = plan.daemonsets[0].after["spec"]["template"]["spec"]["containers"][0]
    assert container["env"][0] == {"name": "LISTEN", "value": "8080"}
    assert plan.shown_env == frozenset({"LISTEN", "PORT"})


def host_network_ds(name, port, namespace="monitoring", **spec):
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "hostNetwork": True,
                    "containers": [{"name": name, "image": "x", "ports": [{"containerPort": port}]}],
                    **spec,
                },
            },
        },
    }


def test_collision_with_a_host_network_workload_on_the_workers():
    plan = plan_convert(CFG, seed_state([host_network_ds("agent", 8080)], nodes=nodes()))
    (refusal,) = plan.refusals
    assert refusal.startswith(
        "keybuzz-api: host port 8080/TCP is already held by DaemonSet monitoring/agent (hostNetwork) on k8s-worker-01"
    )


def test_no_collision_with_a_workload_pinned_to_the_masters():
    pinned = host_network_ds(
        "etcd-agent",
        8080,
        nodeSelector={CONTROL_PLANE: "true"},
        tolerations=[{"key": CONTROL_PLANE, "operator": "Exists"}],
    )
    assert not plan_convert(CFG, seed_state([pinned], nodes=nodes())).refusals
    # Without the nodes (an offline state file) placement is unknown: assume they meet.
    assert plan_convert(CFG, seed_state([pinned])).refusals


def test_collision_with_a_plain_host_port():
    dep = host_network_ds("proxy", 3000)
    dep["kind"] = "Deployment"
    pod = dep["spec"]["template"]["spec"]
    pod["hostNetwork"] = False
    assert not plan_convert(CFG, seed_state([copy.deepcopy(dep)])).refusals  # a containerPort alone holds nothing
    pod["containers"][0]["ports"][0]["hostPort"] = 3000
    (refusal,) = plan_convert(CFG, seed_state([dep])).refusals
    assert "keybuzz-front: host port 3000/TCP is already held by Deployment monitoring/proxy (hostPort)" == refusal


def test_collision_with_ingress_reserved_ports_and_between_apps():
    objs = seed_objects()
    deps = by_name(objs, "Deployment")
    api = deps["keybuzz-api"]["spec"]["template"]["spec"]["containers"][0]
    api["ports"][0]["containerPort"] = 80
    api["env"][0]["value"] = "80"
    plan = plan_convert(CFG, observed_from_objects(objs, CFG), keep_port=True)
    assert plan.refusals == (
        "keybuzz-api: host port 80/TCP is reserved for ingress-nginx (ingress.reserved_host_ports)",
    )
    api["ports"][0]["containerPort"] = 3000
    api["env"][0]["value"] = "3000"
    plan = plan_convert(CFG, observed_from_objects(objs, CFG), keep_port=True)
    assert plan.refusals == ("keybuzz-front: host port 3000/TCP is also the host port of keybuzz-api",)


def test_refuses_when_no_worker_can_run_it():
    objs = seed_objects()
    by_name(objs, "Deployment")["keybuzz-api"]["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "yes"}
    plan = plan_convert(CFG, observed_from_objects(objs + nodes(), CFG))
    workers = ", ".join(f"k8s-worker-0{i}" for i in range(1, 6))
    assert plan.refusals == (
        f"keybuzz-api: its DaemonSet would leave out worker(s) {workers} (the cluster's worker Nodes): "
        "nodeSelector gpu=yes: no label gpu; the app must run on every worker: widen or remove that constraint",
    )


def test_missing_service_and_missing_service_port_are_refused():
    objs = [o for o in seed_objects() if not (o["kind"] == "Service" and o["metadata"]["name"] == "keybuzz-api")]
    assert plan_convert(CFG, observed_from_objects(objs, CFG)).refusals == (
        "keybuzz-api: Service keybuzz/keybuzz-api not found",
    )
    objs = seed_objects()
    by_name(objs, "Service")["keybuzz-front"]["spec"]["ports"][0]["port"] = 8000
    (refusal,) = plan_convert(CFG, observed_from_objects(objs, CFG)).refusals
    assert refusal == "keybuzz-front: Service keybuzz/keybuzz-front has no port 80 (apps[].service_port)"


def test_env_warnings_name_each_variable_and_not_the_secret():
    objs = seed_objects()
    env = by_name(objs, "Deployment")["keybuzz-api"]["spec"]["template"]["spec"]["containers"][0]["env"]
    env += [
        {"name": "REDIS", "value": "redis://:pw-123@redis.cache.svc:6379"},
        {"name": "SEARCH", "value": "http://10.43.7.9:9200"},
        {"name": "CLUSTER_IP", "value": "198.19.130.5"},
        {"name": "PUBLIC", "value": "https://api.stripe.com"},
        {"name": "SVCNAME", "value": "my.svc-not-internal.example.com"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    services = by_name(objs, "Service")
    services["keybuzz-api"]["spec"]["clusterIP"] = "198.19.130.5"
    warnings = plan_convert(CFG, observed_from_objects(objs, CFG)).warnings
    named = sorted(w.split(" env ")[1].split(" ")[0] for w in warnings)
    assert named == ["API_INTERNAL_URL", "CLUSTER_IP", "REDIS", "SEARCH"]
    assert not any("pw-123" in w for w in warnings)
    assert any(
        "redis.cache.svc" in w
        and "fail if the overlay between the nodes is broken (not checked;" in w
        and "will fail" not in w
        for w in warnings
    )


def _seen(healthy: bool | None, cause: str = "") -> OverlaySeen:
    return OverlaySeen(healthy, dt.datetime(2026, 11, 30, 7, 50, tzinfo=dt.UTC), cause)


def test_the_clusterip_warning_follows_what_diagnose_saw_of_the_overlay():
    objs = seed_objects()
    state = observed_from_objects(objs, CFG)
    unknown = plan_convert(CFG, state)
    broken = plan_convert(CFG, dataclasses.replace(state, overlay=_seen(False, "ufw-blocks-vxlan")))
    unsure = plan_convert(CFG, dataclasses.replace(state, overlay=_seen(None)))
    healthy = plan_convert(CFG, dataclasses.replace(state, overlay=_seen(True)))

    def about_env(lines: tuple[str, ...]) -> list[str]:
        return [line for line in lines if "API_INTERNAL_URL" in line]

    (never,) = about_env(unknown.warnings)
    assert "(not checked; keybuzz-fix diagnose says; this workaround does not mend it)" in never
    (failing,) = about_env(broken.warnings)
    assert "those calls fail while the overlay between the nodes is broken" in failing
    assert "diagnose found the overlay broken at 07:50 UTC (ufw-blocks-vxlan)" in failing
    (partly,) = about_env(unsure.warnings)
    assert "did not probe every node" in partly
    assert about_env(healthy.warnings) == []  # seen healthy: no warning, a note
    (fine,) = about_env(healthy.notes)
    assert fine.endswith("diagnose found the overlay healthy at 07:50 UTC, so those calls go through")
    assert healthy.changes == unknown.changes  # what it observed changes what is said, never what is done


NOW = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
RECORD = {
    "time": "2026-11-30T07:50:00+00:00",
    "healthy": True,
    "cause": "",
    "nodes": {"k8s-worker-01": "10.0.0.11", "k8s-worker-02": "10.0.0.12", "k8s-master-01": "10.0.0.1"},
}


@pytest.mark.parametrize(
    ("record", "names", "applies"),
    [
        (RECORD, {"k8s-worker-01": "10.0.0.11", "k8s-worker-02": "10.0.0.12"}, True),
        (RECORD, {"k8s-worker-01": None}, True),  # the cluster's Nodes: names only
        (RECORD, {"k8s-worker-01": "10.0.0.11", "k8s-worker-03": "10.0.0.13"}, False),  # a worker not diagnosed
        (RECORD, {"k8s-worker-01": "10.0.0.99"}, False),  # another address: another node
        ({**RECORD, "time": "2026-11-30T06:59:00+00:00"}, {"k8s-worker-01": None}, False),  # over an hour old
        ({**RECORD, "time": "2026-11-30T08:10:00+00:00"}, {"k8s-worker-01": None}, False),  # from the future
        ({**RECORD, "time": "yesterday"}, {"k8s-worker-01": None}, False),
        ({**RECORD, "time": "2026-11-30T07:50:00"}, {"k8s-worker-01": None}, False),  # no time zone
        ({**RECORD, "healthy": "yes"}, {"k8s-worker-01": None}, False),
        ({**RECORD, "nodes": ["k8s-worker-01"]}, {"k8s-worker-01": None}, False),
        (None, {"k8s-worker-01": None}, False),
        (RECORD, {}, False),
    ],
)
def test_what_diagnose_saw_applies_only_to_the_nodes_it_saw_lately(record, names, applies):
    seen = overlay_seen(record, names, NOW)
    assert (seen is not None) is applies
    if seen is not None:
        assert seen.healthy is True and seen.describe() == "diagnose found the overlay healthy at 07:50 UTC"


def test_to_back_up_holds_what_changes_only():
    state = seed_state()
    plan = plan_convert(CFG, state)
    conv = converted_state(plan, state)
    assert plan_convert(CFG, conv).to_back_up == []


def test_offline_json_shape_is_complete():
    plan = plan_convert(CFG, seed_state())
    out = offline_json(plan)
    assert set(out) == {"command", "dry_run", "exit_code", "apply", "delete", "warnings", "refusals", "error"}
    assert out["refusals"] == [] and out["error"] is None
    env = out["apply"][0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "PORT", "value": "8080"}
    assert env[1] == {"name": "NODE_ENV", "value": "production"}  # machine output is never masked
    assert out["delete"][-1] == {"kind": "Deployment", "namespace": "keybuzz", "name": "keybuzz-front"}


@pytest.mark.parametrize(
    "want,have,subset",
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": [1, {"x": 1}]}, {"a": [1, {"x": 1, "y": 2}]}, True),
        ({"a": [1]}, {"a": [1, 2]}, False),
        ({"a": {"b": 1}}, {"a": {"b": 2}}, False),
        ({"a": 1}, {}, False),
    ],
)
def test_is_subset(want, have, subset):
    assert is_subset(want, have) is subset
