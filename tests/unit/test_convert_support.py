"""Objects helpers, placement, masking in the CLI output, backups, the rollback plan, readiness
and the watch loop (with a fake API), and the change executor's audit trail."""

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix import storage
from keybuzz_fix.cli import app
from keybuzz_fix.cluster import backup
from keybuzz_fix.cluster.changes import Change, Verb
from keybuzz_fix.cluster.objects import MASK, mask_values, parse_objects, project, strip_server_fields, yaml_diff
from keybuzz_fix.cluster.rbac import permissions
from keybuzz_fix.cluster.rollback import plan_rollback
from keybuzz_fix.cluster.rollout import Stuck, daemonset_ready, deployment_ready, execute, wait_ready
from keybuzz_fix.cluster.scheduling import HostPort, fits, host_ports
from keybuzz_fix.errors import ClusterError, InputError, UsageError

DATA = Path(__file__).parent.parent / "data" / "convert"
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("state_dir")


# -- objects ------------------------------------------------------------------------------------


def test_strip_server_fields():
    obj = {
        "kind": "Deployment",
        "metadata": {
            "name": "a",
            "uid": "u",
            "resourceVersion": "1",
            "generation": 3,
            "creationTimestamp": "t",
            "managedFields": [],
            "labels": {"x": "y"},
            "annotations": {"deployment.kubernetes.io/revision": "2"},
        },
        "spec": {"template": {"metadata": {"creationTimestamp": None}}},
        "status": {"replicas": 2},
    }
    assert strip_server_fields(obj) == {
        "kind": "Deployment",
        "metadata": {"name": "a", "labels": {"x": "y"}},
        "spec": {"template": {"metadata": {}}},
    }
    assert obj["metadata"]["uid"] == "u"  # a copy


def test_mask_values_keeps_references_and_the_port_variable():
    obj = {
        "kind": "DaemonSet",
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"env":"secret"}'}},
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [{"env": [{"name": "A", "value": "x"}]}],
                    "containers": [
                        {
                            "env": [
                                {"name": "PORT", "value": "8080"},
                                {"name": "TOKEN", "value": "t0ps3cret"},
                                {"name": "REF", "valueFrom": {"x": 1}},
                            ]
                        }
                    ],
                }
            }
        },
    }
    masked = mask_values(obj, ["PORT"])
    assert "t0ps3cret" not in json.dumps(masked) and "secret" not in json.dumps(masked)
    env = masked["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [
        {"name": "PORT", "value": "8080"},
        {"name": "TOKEN", "value": MASK},
        {"name": "REF", "valueFrom": {"x": 1}},
    ]
    assert masked["spec"]["template"]["spec"]["initContainers"][0]["env"][0]["value"] == MASK


def test_project_and_diff():
    have = {"a": 1, "b": {"c": 2, "d": 3}, "l": [{"x": 1, "y": 2}]}
    assert project(have, {"b": {"c": 0}, "l": [{"x": 0}]}) == {"b": {"c": 2}, "l": [{"x": 1}]}
    lines = yaml_diff({"a": 1}, {"a": 2}, old="Thing (now)", new="Thing (planned)", context=2)
    assert "-a: 1" in lines and "+a: 2" in lines
    assert yaml_diff({"a": 1}, {"a": 1}, old="Thing (now)", new="Thing (planned)", context=2) == []


def test_parse_objects_list_and_stream():
    text = "kind: List\nitems:\n- {kind: Service, metadata: {name: a}}\n---\nkind: Pod\nmetadata: {name: b}\n---\n"
    assert [o["metadata"]["name"] for o in parse_objects(text, "f")] == ["a", "b"]
    with pytest.raises(InputError, match="f: document 1: an item without kind or metadata.name"):
        parse_objects("kind: List\nitems: [{metadata: {name: x}}]\n", "f")
    with pytest.raises(InputError, match="without a list of items"):
        parse_objects("kind: List\nitems: 3\n", "f")


# -- placement ----------------------------------------------------------------------------------


def node(name, labels=None, taints=None):
    return {"kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": taints or []}}


@pytest.mark.parametrize(
    "spec,ok",
    [
        ({}, True),
        ({"nodeSelector": {"disk": "ssd"}}, True),
        ({"nodeSelector": {"disk": "hdd"}}, False),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                                {"matchExpressions": [{"key": "disk", "operator": "Exists"}]},
                            ]
                        }
                    }
                }
            },
            True,
        ),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "cpu", "operator": "Gt", "values": ["8"]}]}
                            ]
                        }
                    }
                }
            },
            False,
        ),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}
                            ]
                        }
                    }
                }
            },
            False,
        ),
    ],
)
def test_fits_selector_and_affinity(spec, ok):
    assert fits(spec, node("n1", {"disk": "ssd", "zone": "a", "cpu": "4"})) is ok


def test_fits_taints():
    tainted = node(
        "m",
        taints=[
            {"key": "role", "value": "db", "effect": "NoSchedule"},
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
        ],
    )
    assert not fits({}, tainted)
    assert fits({"tolerations": [{"key": "role", "operator": "Equal", "value": "db"}]}, tainted)
    assert not fits({"tolerations": [{"key": "role", "value": "web"}]}, tainted)
    assert fits({"tolerations": [{"operator": "Exists"}]}, tainted)
    assert not fits({"tolerations": [{"key": "role", "operator": "Exists", "effect": "NoExecute"}]}, tainted)


def test_host_ports():
    spec = {
        "hostNetwork": True,
        "containers": [{"ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}]}],
        "ephemeralContainers": [{"ports": [{"containerPort": 9}]}],
    }
    assert host_ports(spec) == {HostPort(80), HostPort(53, "UDP")}
    assert host_ports({"containers": [{"ports": [{"containerPort": 80}, {"containerPort": 81, "hostPort": 81}]}]}) == {
        HostPort(81)
    }


# -- masking end to end ------------------------------------------------------------------------


def test_text_plan_masks_env_values_unless_asked():
    state_file = str(DATA / "03-numeric-probes-affinity" / "state.yaml")
    masked = runner.invoke(app, ["convert", "--from-file", state_file])
    assert masked.exit_code == 0, masked.output
    assert "s3cret" not in masked.output and "postgresql://" not in masked.output
    assert "'8080'" in masked.output  # the port variable the tool rewrites stays readable
    assert "--show-values" in masked.output
    for fmt in ("yaml", "json"):  # machine output is what would be applied: complete
        out = runner.invoke(app, ["convert", "--from-file", state_file, "-o", fmt]).stdout
        assert "s3cret" in out and MASK not in out
    shown = runner.invoke(app, ["convert", "--from-file", state_file, "--show-values"])
    assert "s3cret" in shown.output


def test_cli_usage_errors(tmp_path):
    result = runner.invoke(app, ["convert", "--from-file", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml: no such file" in result.output
    result = runner.invoke(
        app, ["convert", "--from-file", str(DATA / "01-kubectl-list" / "state.yaml"), "--kubeconfig", "x"]
    )
    assert result.exit_code == 2 and "--from-file touches no cluster" in result.output
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    result = runner.invoke(app, ["convert", "--from-file", str(empty)])
    assert result.exit_code == 2 and "holds no Kubernetes object" in result.output
    result = runner.invoke(app, ["convert", "-o", "yaml", "--kubeconfig", str(empty)])
    assert result.exit_code == 2 and "-o yaml prints the objects convert would apply" in result.output
    result = runner.invoke(app, ["convert", "--timeout", "-1", "--kubeconfig", str(empty), "--dry-run"])
    assert result.exit_code == 2 and "--timeout must be more than 0 seconds, got -1" in result.output
    result = runner.invoke(app, ["rollback"])
    assert result.exit_code == 2 and "exactly one of --backup FILE and --latest" in result.output
    result = runner.invoke(app, ["rollback", "--latest"])
    assert result.exit_code == 2 and "no convert backup in" in result.output
    assert "Traceback" not in result.output


def test_help_texts():
    for command in ("convert", "rollback"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output


# -- backups ------------------------------------------------------------------------------------


def sample(kind, name, uid="u1"):
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "keybuzz", "uid": uid},
        "spec": {"x": 1},
    }


def test_backup_is_private_and_reads_back():
    objs = [sample("Deployment", "keybuzz-api"), sample("Service", "keybuzz-api")]
    path = backup.write(objs, command="convert", server="https://k:6443", namespace="keybuzz")
    assert path.parent == storage.state_dir() / "backups"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    back = backup.read_backup(path)
    assert back.objects == objs and back.server == "https://k:6443" and back.namespace == "keybuzz"
    assert back.command == "convert"
    assert "# object: Deployment keybuzz/keybuzz-api" in path.read_text()
    second = backup.write(objs[:1], command="convert", server="s", namespace="keybuzz")
    backup.write(objs[:1], command="rollback", server="s", namespace="keybuzz")
    assert backup.latest_backup() == second
    assert backup.history() == [second, path]


def test_backup_load_errors(tmp_path):
    with pytest.raises(InputError, match="no such backup file"):
        backup.read_backup(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        backup.read_backup(bad)
    with pytest.raises(UsageError):
        backup.latest_backup()


def test_backup_carries_the_originals_of_an_unfinished_run():
    first = [
        sample("Service", "keybuzz-api"),
        sample("HorizontalPodAutoscaler", "keybuzz-api"),
        sample("Deployment", "keybuzz-api", uid="dep-1"),
    ]
    path = backup.write(first, command="convert", server="s", namespace="keybuzz")
    previous = backup.read_backup(path)
    now = first[1:]  # the Service was switched by the interrupted run: not backed up again
    assert backup.carried(previous, now, ["dep-1"], server="s", namespace="keybuzz") == [first[0]]
    assert backup.carried(previous, now, ["dep-2"], server="s", namespace="keybuzz") == []  # another conversion
    assert backup.carried(previous, now, ["dep-1"], server="other", namespace="keybuzz") == []
    assert backup.carried(None, now, ["dep-1"], server="s", namespace="keybuzz") == []


# -- rollback plan ------------------------------------------------------------------------------


def svc(kind_type, target, node_port=None, rv="9"):
    port = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": target}
    if node_port:
        port["nodePort"] = node_port
    spec = {"type": kind_type, "clusterIP": "10.43.0.9", "ports": [port], "selector": {"app": "keybuzz-api"}}
    if kind_type == "NodePort":
        spec["externalTrafficPolicy"] = "Cluster"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "spec": spec,
        "metadata": {"name": "keybuzz-api", "namespace": "keybuzz", "resourceVersion": rv, "uid": "s"},
    }


def ours(name="keybuzz-api", managed=True):
    labels = {"app.kubernetes.io/managed-by": "keybuzz-fix"} if managed else {}
    return {"kind": "DaemonSet", "metadata": {"name": name, "namespace": "keybuzz", "uid": "ds-1", "labels": labels}}


def test_rollback_plan_restores_in_order():
    saved = [
        svc("ClusterIP", "http"),
        sample("HorizontalPodAutoscaler", "keybuzz-api"),
        dict(sample("Deployment", "keybuzz-api"), status={"replicas": 2}),
    ]
    plan = plan_rollback(saved, [svc("NodePort", 8080, 30080, rv="12"), ours()])
    assert [(c.label, c.kind) for c in plan.changes] == [
        ("create", "Deployment"),
        ("create", "HorizontalPodAutoscaler"),
        ("patch", "Service"),
        ("delete", "DaemonSet"),
    ]
    created = plan.creates[0].body
    assert "uid" not in created["metadata"] and "status" not in created
    assert plan.services[0].body == {
        "metadata": {"resourceVersion": "12"},
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
            "externalTrafficPolicy": None,
        },
    }
    assert plan.daemonsets[0].uid == "ds-1"
    assert plan.deployments == ["keybuzz-api"]


def test_rollback_plan_is_empty_once_restored_and_leaves_foreign_daemonsets():
    saved = [svc("ClusterIP", "http"), sample("Deployment", "keybuzz-api")]
    plan = plan_rollback(saved, [svc("ClusterIP", "http"), sample("Deployment", "keybuzz-api"), ours(managed=False)])
    assert plan.pending == []
    assert plan.warnings == ("DaemonSet keybuzz/keybuzz-api is not managed by keybuzz-fix: left alone",)


# -- readiness and the watch loop --------------------------------------------------------------


def ds_status(gen=1, observed=1, desired=5, ready=5, updated=5, available=5, unavailable=0):
    return {
        "metadata": {"name": "keybuzz-api", "generation": gen, "resourceVersion": "1"},
        "status": {
            "observedGeneration": observed,
            "desiredNumberScheduled": desired,
            "numberReady": ready,
            "updatedNumberScheduled": updated,
            "numberAvailable": available,
            "numberUnavailable": unavailable,
        },
    }


@pytest.mark.parametrize(
    "kwargs,ready",
    [
        ({}, True),
        ({"observed": 0}, False),
        ({"desired": 0, "ready": 0, "updated": 0, "available": 0}, False),
        ({"ready": 4}, False),
        ({"updated": 4}, False),
        ({"unavailable": 1}, False),
    ],
)
def test_daemonset_ready(kwargs, ready):
    assert daemonset_ready(ds_status(**kwargs)) is ready


def test_deployment_ready():
    dep = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2, "replicas": 2},
    }
    assert deployment_ready(dep)
    dep["status"]["replicas"] = 3  # an old pod still there
    assert not deployment_ready(dep)


class FakeKube:
    """Lists once, then plays scripted watch streams."""

    def __init__(self, listed, streams, pods=(), events=()):
        self.listed, self.streams, self.pods, self.events = listed, list(streams), list(pods), list(events)
        self.watches = []

    def list_with_version(self, kind, namespace):
        return list(self.listed), "100"

    def watch(self, kind, namespace, *, resource_version, timeout):
        self.watches.append(resource_version)
        yield from (self.streams.pop(0) if self.streams else [])

    def list(self, kind, namespace=None, selector=None):
        return {"Pod": self.pods, "Event": self.events}[kind]


def test_wait_returns_on_the_event_that_makes_it_ready():
    kube = FakeKube(
        [ds_status(ready=3)],
        [
            [
                ("BOOKMARK", {"metadata": {"resourceVersion": "105"}}),
                (
                    "MODIFIED",
                    dict(
                        ds_status(ready=4), metadata={"name": "keybuzz-api", "generation": 1, "resourceVersion": "106"}
                    ),
                ),
                ("MODIFIED", ds_status()),
            ]
        ],
    )
    objs = wait_ready(kube, "DaemonSet", "keybuzz", ["keybuzz-api"], timeout=5)
    assert daemonset_ready(objs["keybuzz-api"]) and kube.watches == ["100"]


def test_wait_relists_after_an_expired_watch_then_reports_stuck_pods():
    stuck_pod = {
        "metadata": {"name": "keybuzz-api-x", "uid": "p1", "ownerReferences": [{"uid": "ds-uid"}]},
        "spec": {"nodeName": "k8s-worker-02"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/8 nodes are available: 1 Insufficient cpu.",
                }
            ],
        },
    }
    other = {"metadata": {"name": "someone-else", "ownerReferences": [{"uid": "zzz"}]}, "status": {}}
    event = {
        "involvedObject": {"uid": "p1"},
        "reason": "FailedScheduling",
        "message": "0/8 nodes are available",
        "lastTimestamp": "2026-01-01T00:00:00Z",
    }
    listed = dict(
        ds_status(ready=4),
        metadata={"name": "keybuzz-api", "generation": 1, "uid": "ds-uid"},
        spec={"selector": {"matchLabels": {"app": "keybuzz-api"}}},
    )
    kube = FakeKube([listed], [[("ERROR", {"code": 410})]], pods=[stuck_pod, other], events=[event])
    with pytest.raises(Stuck) as exc:
        wait_ready(kube, "DaemonSet", "keybuzz", ["keybuzz-api"], timeout=0.2)
    assert [p.name for p in exc.value.pods] == ["keybuzz-api-x"]
    message = str(exc.value)
    assert "DaemonSet keybuzz/keybuzz-api: 4/5 pods ready" in message
    assert "keybuzz-api-x on k8s-worker-02 Pending: PodScheduled Unschedulable" in message
    assert "FailedScheduling: 0/8 nodes are available" in message


# -- executing changes --------------------------------------------------------------------------


class RecordingKube:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def apply(self, obj, *, dry_run=False, force=False):
        self.calls.append(("apply", obj["metadata"]["name"], dry_run, force))
        if self.fail:
            raise ClusterError("boom")

    def patch(self, kind, name, namespace, body, *, patch_type, dry_run=False):
        self.calls.append(("patch", name, patch_type, dry_run))

    def delete(self, kind, name, namespace, *, uid=None, dry_run=False):
        self.calls.append(("delete", name, uid, dry_run))


def audit_lines():
    path = storage.state_dir() / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_execute_sends_and_audits():
    kube = RecordingKube()
    ds = {"kind": "DaemonSet", "metadata": {"name": "a", "namespace": "keybuzz"}}
    execute(kube, Change(Verb.APPLY, "DaemonSet", "keybuzz", "a", "why", body=ds), command="convert", force=True)
    execute(kube, Change(Verb.DELETE, "Deployment", "keybuzz", "a", "gone", uid="u-1"), command="convert")
    execute(kube, Change(Verb.PATCH, "Service", "keybuzz", "a", "switch", body={}), command="convert", dry_run=True)
    execute(kube, Change(Verb.NONE, "Service", "keybuzz", "b", "same"), command="convert")
    assert kube.calls == [("apply", "a", False, True), ("delete", "a", "u-1", False), ("patch", "a", "merge", True)]
    lines = audit_lines()
    assert [(e["where"], e["action"], e["outcome"]) for e in lines] == [
        ("DaemonSet keybuzz/a", "create", "ok"),
        ("Deployment keybuzz/a", "delete", "ok"),
    ]
    assert lines[1]["uid"] == "u-1" and lines[0]["who"] and lines[0]["time"]
    assert stat.S_IMODE(os.stat(storage.state_dir() / "audit.jsonl").st_mode) == 0o600


def test_execute_audits_failures():
    with pytest.raises(ClusterError):
        execute(
            RecordingKube(fail=True),
            Change(
                Verb.APPLY, "DaemonSet", "keybuzz", "a", "why", body={"kind": "DaemonSet", "metadata": {"name": "a"}}
            ),
            command="convert",
        )
    (entry,) = audit_lines()
    assert entry["outcome"] == "failed" and entry["error"] == "boom"


def test_permissions_needed():
    new_ds = Change(Verb.APPLY, "DaemonSet", "keybuzz", "a", "", body={})
    old_ds = Change(Verb.APPLY, "DaemonSet", "keybuzz", "b", "", body={}, before={})
    delete = Change(Verb.DELETE, "Deployment", "keybuzz", "a", "")
    assert permissions([new_ds, old_ds, delete], wait_kind="DaemonSet") == [
        ("patch", "DaemonSet"),
        ("create", "DaemonSet"),
        ("delete", "Deployment"),
        ("list", "DaemonSet"),
        ("watch", "DaemonSet"),
    ]
