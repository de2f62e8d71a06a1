"""Issue 16, kind 1: every place a pod names the app's port, moved or refused (never ignored).

The env rule is Kubernetes': the kubelet builds a container's environment in order (envFrom, then
each env entry, ``tmpEnv[envVar.Name] = runtimeVal``), so the last entry of a name wins; the API
server warns that a later entry "hides previous definition". kwok is no kubelet, so these tests
pin the planner's reading of that rule; tests/integration/test_convert_owners.py shows the API
server's side (its warning, and server-side apply refusing the duplicate).
"""

import copy
from pathlib import Path

import pytest
import yaml

from keybuzz_fix import config
from keybuzz_fix.cluster.convert import plan_convert
from keybuzz_fix.cluster.objects import parse_objects
from keybuzz_fix.cluster.observed import observed_from_objects
from keybuzz_fix.cluster.podports import dedupe_env, env_entry, names_port

DATA = Path(__file__).parent.parent / "data"
CFG = config.load_config()


def seed():
    return parse_objects((DATA / "cluster" / "keybuzz.yaml").read_text(), "keybuzz.yaml")


def api_pod(objs):
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "keybuzz-api")
    return dep["spec"]["template"]["spec"]


def plan(objs, **kwargs):
    return plan_convert(CFG, observed_from_objects(objs, CFG), **kwargs)


def daemonset(p, name="keybuzz-api"):
    return next(c.after for c in p.daemonsets if c.name == name)


def state(name):
    path = DATA / "convert" / name / "state.yaml"
    return parse_objects(path.read_text(), str(path))


# -- env: the last entry wins ------------------------------------------------------------------------


def test_env_entry_reads_the_last_entry_like_the_kubelet():
    container = {
        "env": [{"name": "PORT", "value": "3000"}, {"name": "X", "value": "1"}, {"name": "PORT", "value": "3001"}]
    }
    assert env_entry(container, "PORT") == (2, {"name": "PORT", "value": "3001"})
    assert env_entry(container, "NOPE") is None


def test_duplicate_port_env_table_case_every_entry_moves_and_one_is_kept():
    """Table case 1 (fluxcd/helm-controller#1333): PORT=3001, NODE_ENV, PORT=3001 again."""
    p = plan(state("20-duplicate-port-env"))
    assert not p.refusals
    (container,) = daemonset(p)["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "PORT", "value": "8080"}, {"name": "NODE_ENV", "value": "production"}]
    assert env_entry(container, "PORT") == (0, {"name": "PORT", "value": "8080"})
    assert container["ports"][0]["containerPort"] == container["ports"][0]["hostPort"] == 8080
    assert any("env PORT 3001 → 8080 in all 2 entries (env[0], env[2]; Kubernetes uses the last)" in n for n in p.notes)
    assert any("sets env PORT 2 times (env[0], env[2])" in n for n in p.notes)


def test_the_last_port_entry_is_the_one_checked_against_the_container_port():
    objs = seed()
    api_pod(objs)["containers"][0]["env"] += [{"name": "PORT", "value": "5000"}]
    (refusal,) = plan(objs).refusals
    assert "env PORT is '5000'" in refusal and "the entry Kubernetes uses" in refusal and "env[4]" in refusal
    # The other way round: the last says 3001 (the container port), an earlier one disagrees.
    objs = seed()
    api_pod(objs)["containers"][0]["env"].insert(0, {"name": "PORT", "value": "5000"})
    (refusal,) = plan(objs).refusals
    assert "containers[0].env[0] sets PORT to '5000' but" in refusal and "env[1], the entry Kubernetes uses" in refusal


def test_keep_port_with_disagreeing_entries_keeps_the_value_kubernetes_uses():
    objs = seed()
    api_pod(objs)["containers"][0]["env"].insert(0, {"name": "PORT", "value": "5000"})
    p = plan(objs, keep_port=True)
    assert not p.refusals
    env = daemonset(p)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [v for v in env if v["name"] == "PORT"] == [{"name": "PORT", "value": "3001"}]
    assert env.index({"name": "PORT", "value": "3001"}) == 0  # where the name first appeared


def test_a_port_entry_from_value_from_is_refused_with_its_index_even_when_a_literal_follows():
    objs = seed()
    env = api_pod(objs)["containers"][0]["env"]
    env.insert(0, {"name": "PORT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "port"}}})
    (refusal,) = plan(objs).refusals
    assert "spec.template.spec.containers[0].env[0]" in refusal and "valueFrom.configMapKeyRef" in refusal
    assert "--keep-port" in refusal


def test_dedupe_keeps_the_first_position_with_the_last_value():
    pod = {
        "containers": [
            {
                "name": "a",
                "env": [
                    {"name": "MODE", "value": "dev"},
                    {"name": "URL", "value": "http://x"},
                    {"name": "MODE", "value": "prod"},
                    {"name": "SAME", "value": "1"},
                    {"name": "SAME", "value": "1"},
                ],
            }
        ]
    }
    found = dedupe_env(pod, "Deployment ns/a: spec.template.spec", "a")
    assert not found.problems and len(found.notes) == 2
    assert pod["containers"][0]["env"] == [
        {"name": "MODE", "value": "prod"},
        {"name": "URL", "value": "http://x"},
        {"name": "SAME", "value": "1"},
    ]


def test_dedupe_refuses_when_an_entry_in_between_reads_the_earlier_value():
    pod = {
        "initContainers": [
            {
                "name": "a",
                "env": [
                    {"name": "MODE", "value": "dev"},
                    {"name": "BANNER", "value": "running in $(MODE)"},
                    {"name": "MODE", "value": "prod"},
                ],
            }
        ]
    }
    before = copy.deepcopy(pod)
    found = dedupe_env(pod, "Deployment ns/a: spec.template.spec", "a")
    (problem,) = found.problems
    assert (
        "spec.template.spec.initContainers[0].env sets MODE 2 times" in problem
        and "env[1] refers to $(MODE)" in problem
    )
    assert pod == before


# -- probes, hooks, sidecars: moved -----------------------------------------------------------------


def test_every_numeric_probe_and_hook_of_every_container_and_sidecar_moves():
    p = plan(state("28-every-port-moves"))
    assert not p.refusals
    pod = daemonset(p)["spec"]["template"]["spec"]
    api = pod["containers"][0]
    assert api["livenessProbe"]["grpc"]["port"] == 8080
    assert api["startupProbe"]["tcpSocket"]["port"] == 8080
    assert api["lifecycle"]["postStart"]["httpGet"]["port"] == 8080
    assert api["readinessProbe"]["httpGet"]["port"] == "http"  # named: follows the port entry
    proxy = pod["initContainers"][1]
    assert proxy["readinessProbe"]["tcpSocket"]["port"] == 8080  # a sidecar checking the app
    assert proxy["startupProbe"]["httpGet"]["port"] == 9901  # its own port: left alone
    assert api["args"] == ["--listen=0.0.0.0:$(PORT)"]  # follows the variable
    assert daemonset(p)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    svc = next(c.after for c in p.services if c.name == "keybuzz-api")
    assert [x["targetPort"] for x in svc["spec"]["ports"]] == [8080, 8080]
    assert "port 9464: targetPort 3001 → 8080" in next(c.reason for c in p.services if c.name == "keybuzz-api")
    assert any("keybuzz-api-headless" in w and "spec.ports[0].targetPort" in w for w in p.warnings)
    assert any("PodDisruptionBudget keybuzz/keybuzz-api (minAvailable 1)" in n for n in p.notes)


# -- written into text: refused by path, warned under --keep-port -----------------------------------


@pytest.mark.parametrize(
    "text,named",
    [
        ("3001", True),
        ("--port=3001", True),
        ("--http-port 3001", True),
        ("PORT=3001 node server.js", True),
        ("server.port: 3001", True),
        (":3001", True),
        ("--bind=:3001", True),
        ("curl -f http://localhost:3001/health", True),
        ("http://127.0.0.1:3001", True),
        ("wget [::1]:3001/x", True),
        ("python -m http.server 3001", True),
        ("exec app --listen '3001'; sleep 1", True),
        ("--port=$(PORT)", False),
        ("http://localhost:$PORT/health", False),
        ("--port=30010", False),
        ("13001", False),
        ("postgresql://u:p@10.43.12.7:3001/db", False),  # another host's port
        ("redis.cache.svc:3001", False),
        ("--timeout=3001ms", False),
        ("v1.3001", False),
    ],
)
def test_names_port(text, named):
    assert names_port(text, 3001) is named


def test_port_written_in_text_is_refused_with_every_field_path():
    p = plan(state("26-refused-port-written"))
    paths = sorted(r.split(": ")[2].split(" names")[0].split(" is port")[0] for r in p.refusals)
    assert paths == [
        "spec.template.metadata.annotations[example.com/listen-port]",
        "spec.template.spec.containers[0].args[1]",
        "spec.template.spec.containers[0].command[2]",
        "spec.template.spec.containers[0].lifecycle.preStop.exec.command[2]",
        "spec.template.spec.containers[0].livenessProbe.exec.command[2]",
        "spec.template.spec.containers[0].readinessProbe.httpGet.httpHeaders[0]",
        "spec.template.spec.initContainers[0].env[0] (UPSTREAM)",
    ]
    assert all(r.startswith("keybuzz-api: Deployment keybuzz/keybuzz-api: ") for r in p.refusals)
    exec_refusal = next(r for r in p.refusals if "livenessProbe.exec" in r)
    assert "an exec command runs as written" in exec_refusal and "--keep-port" in exec_refusal
    assert not any("http://127.0.0.1" in r for r in p.refusals)  # paths, never values (they may be secrets)


def test_keep_port_warns_about_the_same_fields_and_converts():
    p = plan(state("26-refused-port-written"), keep_port=True)
    assert not p.refusals
    assert len(p.warnings) == 7 and all("(--keep-port)" in w for w in p.warnings)
    assert daemonset(p)["spec"]["template"]["spec"]["containers"][0]["args"] == ["--port", "3001"]


def test_front_already_on_its_host_port_is_not_scanned():
    objs = seed()
    front = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "keybuzz-front")
    front["spec"]["template"]["spec"]["containers"][0]["args"] = ["--port", "3000"]
    assert not plan(objs).refusals  # 3000 is its host port: nothing moves


# -- host ports inside the pod ------------------------------------------------------------------------


def test_a_sidecar_on_the_host_port_is_refused_and_a_plain_init_container_is_not():
    assert plan(state("29-refused-sidecar-holds-host-port")).refusals == (
        "keybuzz-api: Deployment keybuzz/keybuzz-api: sidecar oauth2-proxy already uses port 8080 "
        "(spec.template.spec.initContainers[0].ports[0])",
    )
    objs = state("29-refused-sidecar-holds-host-port")
    api_dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "keybuzz-api")
    del api_dep["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"]  # runs before the app, then exits
    assert not plan(objs).refusals


def test_two_running_containers_on_one_port_are_refused():
    objs = seed()
    pod = api_pod(objs)
    pod["containers"].append({"name": "metrics", "image": "x", "ports": [{"containerPort": 9090}]})
    pod["initContainers"] = [
        {"name": "agent", "image": "y", "restartPolicy": "Always", "ports": [{"containerPort": 9090}]}
    ]
    (refusal,) = plan(objs).refusals
    assert (
        "spec.template.spec.initContainers[0].ports[0] and spec.template.spec.containers[1].ports[0] both hold "
        "host port 9090/TCP" in refusal
    )


def test_host_port_unequal_to_container_port_is_refused_in_init_containers_too():
    objs = seed()
    api_pod(objs)["initContainers"] = [{"name": "i", "image": "y", "ports": [{"containerPort": 70, "hostPort": 7070}]}]
    (refusal,) = plan(objs).refusals
    assert "container i port 70 has hostPort 7070; with hostNetwork both must be equal" in refusal


def test_a_sidecar_port_collides_with_another_workload_on_the_workers():
    objs = seed()
    api_pod(objs)["initContainers"] = [
        {"name": "exporter", "image": "y", "restartPolicy": "Always", "ports": [{"containerPort": 9100}]}
    ]
    exporter = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "node-exporter", "namespace": "monitoring"},
        "spec": {
            "selector": {"matchLabels": {"app": "ne"}},
            "template": {
                "metadata": {"labels": {"app": "ne"}},
                "spec": {"hostNetwork": True, "containers": [{"name": "ne", "ports": [{"containerPort": 9100}]}]},
            },
        },
    }
    nodes = [d for d in yaml.safe_load_all((DATA / "cluster" / "nodes.yaml").read_text()) if d]
    (refusal,) = plan(objs + [exporter] + nodes).refusals
    assert refusal.startswith("keybuzz-api: host port 9100/TCP is already held by DaemonSet monitoring/node-exporter")


def test_the_service_may_target_a_sidecar_port():
    objs = seed()
    pod = api_pod(objs)
    pod["containers"][0]["ports"] = [{"name": "app", "containerPort": 3002}]
    pod["containers"][0]["env"][0]["value"] = "3002"
    pod["initContainers"] = [
        {
            "name": "tls-proxy",
            "image": "y",
            "restartPolicy": "Always",
            "ports": [{"name": "http", "containerPort": 3001}],
            "env": [{"name": "PORT", "value": "3001"}, {"name": "UPSTREAM", "value": "127.0.0.1:3002"}],
        }
    ]
    p = plan(objs)
    assert not p.refusals, p.refusals
    proxy = daemonset(p)["spec"]["template"]["spec"]["initContainers"][0]
    assert proxy["ports"] == [{"name": "http", "containerPort": 8080, "hostPort": 8080}]
    assert proxy["env"][0] == {"name": "PORT", "value": "8080"}


def test_the_front_service_reason_names_only_what_changes():
    # keybuzz-front already targets 3000, its host port: the reason must not show "3000 → 3000".
    reasons = {c.name: c.reason for c in plan(seed()).services}
    front, api = reasons["keybuzz-front"], reasons["keybuzz-api"]
    assert "targetPort 3000 → 3000" not in front and "targetPort" not in front
    assert front.startswith("type ClusterIP → NodePort, port 80: nodePort 30000")
    assert "targetPort http → 8080" in api
