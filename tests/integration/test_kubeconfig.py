"""The kubeconfig read as kubectl reads it, against the real test control plane.

- ``proxy-url``: the API reachable only through a real HTTP CONNECT proxy (tinyproxy) on a lab
  host; ``tls-server-name`` names the certificate's other name;
- impersonation (``--as``, ``--as-group``, the user entry's ``as``/``as-groups``), judged by the
  API server's RBAC: a missing permission is named, with the impersonated user;
- in-cluster config: the CLI in a mount namespace where a ServiceAccount token is mounted as in a
  pod (manifests/job.yaml's ServiceAccount and bindings), its backups on a "volume";
- an exec credential plugin whose token expires (and is revoked) during a long wait: run again;
- the namespace: ``-n``, then ``--config``'s, then the context's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pexpect
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from keybuzz_fix.cluster.connect import from_kubeconfig
from tests.cluster.controlplane import free_port
from tests.lab.bastion import UnixBridge
from tests.lab.hosts import HostSpec, Lab
from tests.terminal import at_terminal, terminal_env

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
ROOT = Path(__file__).resolve().parent.parent.parent
MANIFESTS = ROOT / "manifests"
NS = "keybuzz"
runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(app, list(args), env={"COLUMNS": "400", **(env or {})})
    assert "Traceback" not in result.output
    return result


def one_error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def edited(
    source: Path,
    path: Path,
    *,
    cluster: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> Path:
    """Write a copy of a kubeconfig with its (only) cluster, user and context entries changed."""
    data = yaml.safe_load(source.read_text())
    for kind, changes in (("clusters", cluster), ("users", user), ("contexts", context)):
        entry = data[kind][0][kind[:-1]]
        for key, value in (changes or {}).items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


# -- objects from the manifests --------------------------------------------------------------


def apply_objects(api: client.ApiClient, objects: list[dict[str, Any]]) -> Callable[[], None]:
    """Create (or replace) RBAC objects and ServiceAccounts; return what deletes them again."""
    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    calls: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {
        "ClusterRole": (rbac.create_cluster_role, rbac.replace_cluster_role, rbac.delete_cluster_role),
        "ClusterRoleBinding": (
            rbac.create_cluster_role_binding,
            rbac.replace_cluster_role_binding,
            rbac.delete_cluster_role_binding,
        ),
        "Role": (rbac.create_namespaced_role, rbac.replace_namespaced_role, rbac.delete_namespaced_role),
        "RoleBinding": (
            rbac.create_namespaced_role_binding,
            rbac.replace_namespaced_role_binding,
            rbac.delete_namespaced_role_binding,
        ),
        "ServiceAccount": (
            core.create_namespaced_service_account,
            core.replace_namespaced_service_account,
            core.delete_namespaced_service_account,
        ),
    }

    def where(obj: dict[str, Any]) -> list[str]:
        ns = obj["metadata"].get("namespace")
        return [ns] if ns else []

    for obj in objects:
        create, replace, _ = calls[obj["kind"]]
        try:
            create(*where(obj), obj)
        except ApiException as e:
            if e.status != 409:
                raise
            replace(obj["metadata"]["name"], *where(obj), obj)

    def remove() -> None:
        for obj in reversed(objects):
            try:
                calls[obj["kind"]][2](obj["metadata"]["name"], *where(obj))
            except ApiException as e:
                if e.status != 404:
                    raise

    return remove


def manifest(name: str, kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return [d for d in docs if kinds is None or d["kind"] in kinds]


@pytest.fixture
def shipped_rbac(keybuzz_cluster: KeybuzzCluster) -> Iterator[None]:
    remove = apply_objects(keybuzz_cluster.api_client, manifest("rbac.yaml"))
    try:
        yield
    finally:
        remove()


def sa_token(api: client.ApiClient, name: str, namespace: str, bound_secret: str | None = None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if bound_secret is not None:
        uid = client.CoreV1Api(api).read_namespaced_secret(bound_secret, namespace).metadata.uid
        spec["boundObjectRef"] = {"kind": "Secret", "apiVersion": "v1", "name": bound_secret, "uid": uid}
    review = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, {"spec": spec})
    return str(review.status.token)


# -- proxy-url ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxied:
    proxy: str  # http://ADDR:8888
    server: str  # https://127.0.0.1:PORT, which only the proxy's host reaches
    log: Path


@pytest.fixture(scope="module")
def proxied(lab_factory: Callable[..., Lab], keybuzz_cluster: KeybuzzCluster) -> Iterator[Proxied]:
    with lab_factory([HostSpec("api-proxy", ufw_active=False, http_listener=False)]) as lab:
        host = lab.hosts[0]
        port = free_port()  # free here: nothing answers it on this machine, only inside the proxy's host
        bridge = UnixBridge(
            host, f"127.0.0.1:{port}", f"127.0.0.1:{keybuzz_cluster.control_plane.apiserver_port}", "api"
        )
        logs = host.workdir / "tinyproxy"
        logs.mkdir(mode=0o777)
        logs.chmod(0o777)
        conf = host.workdir / "tinyproxy.conf"
        conf.write_text(
            f"User nobody\nGroup nogroup\nPort 8888\nListen {host.ip}\nTimeout 600\nMaxClients 20\n"
            f'LogFile "{logs}/tinyproxy.log"\nLogLevel Connect\nAllow 198.18.0.0/15\nDisableViaHeader Yes\n'
        )
        host.spawn("tinyproxy", ["tinyproxy", "-d", "-c", str(conf)], host.workdir / "tinyproxy.out")
        deadline = time.monotonic() + 15
        while not lab.tcp_reachable(host.ip, 8888, timeout=0.5):
            assert time.monotonic() < deadline, (host.workdir / "tinyproxy.out").read_text()
            time.sleep(0.1)
        try:
            yield Proxied(f"http://{host.ip}:8888", f"https://127.0.0.1:{port}", logs / "tinyproxy.log")
        finally:
            bridge.close()


def test_the_api_reached_only_through_the_proxy_url(
    keybuzz_cluster: KeybuzzCluster, proxied: Proxied, tmp_path: Path
) -> None:
    admin = keybuzz_cluster.kubeconfig
    direct = edited(admin, tmp_path / "direct", cluster={"server": proxied.server})
    result = cli("convert", "--dry-run", "--kubeconfig", str(direct))
    assert result.exit_code == 1
    assert one_error(result).startswith(f"keybuzz-fix: error: cannot reach the Kubernetes API at {proxied.server}")

    via = edited(
        admin,
        tmp_path / "via-proxy",
        cluster={"server": proxied.server, "proxy-url": proxied.proxy, "tls-server-name": "kube-apiserver"},
    )
    result = cli("convert", "--dry-run", "--kubeconfig", str(via), "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["changes"]
    connects = [line for line in proxied.log.read_text().splitlines() if "CONNECT" in line]
    assert any(proxied.server.removeprefix("https://") in line for line in connects), connects

    result = cli("ingress", "--dry-run", "--kubeconfig", str(via))
    assert result.exit_code == 0, result.output

    closed = edited(admin, tmp_path / "closed", cluster={"server": proxied.server, "proxy-url": "http://198.18.0.1:9"})
    result = cli("convert", "--dry-run", "--kubeconfig", str(closed))
    assert result.exit_code == 1
    line = one_error(result)
    assert f"cannot reach the Kubernetes API at {proxied.server}" in line and "proxy http://198.18.0.1:9" in line


def test_proxy_credentials_are_never_shown(keybuzz_cluster: KeybuzzCluster, tmp_path: Path) -> None:
    password = f"kbf-proxy-{secrets.token_hex(6)}"
    closed = edited(
        keybuzz_cluster.kubeconfig, tmp_path / "k", cluster={"proxy-url": f"http://ops:{password}@198.18.0.1:9"}
    )
    result = cli("convert", "--dry-run", "--kubeconfig", str(closed))
    assert result.exit_code == 1 and password not in result.output and "proxy http://198.18.0.1:9" in result.output


def test_insecure_skip_tls_verify_as_the_kubeconfig_says(keybuzz_cluster: KeybuzzCluster, tmp_path: Path) -> None:
    insecure = edited(
        keybuzz_cluster.kubeconfig,
        tmp_path / "insecure",
        cluster={"certificate-authority-data": None, "insecure-skip-tls-verify": True},
    )
    assert cli("convert", "--dry-run", "--kubeconfig", str(insecure)).exit_code == 0
    # At a terminal, in a process of its own (warning filters are per process): urllib3's
    # InsecureRequestWarning never repeats; the prompt names the cluster as not verified, once.
    child = at_terminal(
        ["convert", "--kubeconfig", str(insecure)], terminal_env(KEYBUZZ_FIX_STATE_DIR=str(tmp_path / "state"))
    )
    try:
        child.expect(r"\[y/N\]")
        shown = child.before
        child.sendline("n")
        child.expect(pexpect.EOF)
    finally:
        child.terminate(force=True)
    assert "Unverified HTTPS request" not in shown and "InsecureRequestWarning" not in shown, shown
    assert shown.count("TLS not verified (insecure-skip-tls-verify)") == 1, shown
    unverified = edited(keybuzz_cluster.kubeconfig, tmp_path / "no-ca", cluster={"certificate-authority-data": None})
    result = cli("convert", "--dry-run", "--kubeconfig", str(unverified))
    assert result.exit_code == 1 and "TLS verification of the Kubernetes API" in one_error(result)


# -- impersonation -----------------------------------------------------------------------------


@pytest.mark.usefixtures("shipped_rbac")
def test_impersonation_is_judged_by_the_api_server(keybuzz_cluster: KeybuzzCluster, tmp_path: Path) -> None:
    admin = str(keybuzz_cluster.kubeconfig)

    result = cli("ingress", "--dry-run", "--kubeconfig", admin, "--as", "kbf-nobody")
    assert result.exit_code == 1
    line = one_error(result)
    assert "forbidden: cannot get daemonsets in namespace ingress-nginx as kbf-nobody" in line
    assert 'User "kbf-nobody" cannot get resource "daemonsets"' in line

    # two groups, two headers: the second one grants (manifests/rbac.yaml binds the group keybuzz-fix)
    result = cli(
        "ingress", "--dry-run", "--kubeconfig", admin, "--as", "kbf-operator",
        "--as-group", "kbf-not-a-group", "--as-group", "keybuzz-fix",
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    as_in_file = edited(
        keybuzz_cluster.kubeconfig, tmp_path / "as", user={"as": "kbf-operator", "as-groups": ["keybuzz-fix"]}
    )
    assert cli("ingress", "--dry-run", "--kubeconfig", str(as_in_file)).exit_code == 0
    result = cli(
        "ingress", "--dry-run", "--kubeconfig", str(as_in_file), "--as", "kbf-nobody", "--as-group", "kbf-none"
    )
    assert result.exit_code == 1 and 'User "kbf-nobody"' in one_error(result)  # the flags win

    result = cli("ingress", "--dry-run", "--kubeconfig", admin, "--as-group", "keybuzz-fix")
    assert result.exit_code == 2 and "pass --as USER" in one_error(result)

    operator = keybuzz_cluster.control_plane.user_kubeconfig("kbf-operator", ["keybuzz-fix"])
    result = cli("ingress", "--dry-run", "--kubeconfig", str(operator), "--as", "keybuzz-admin")
    assert result.exit_code == 1
    line = one_error(result)
    assert "forbidden: kbf-operator may not impersonate keybuzz-admin (needed to get DaemonSet" in line
    assert 'User "kbf-operator" cannot impersonate' in line


# -- in-cluster config -------------------------------------------------------------------------


def run_in_pod(
    cluster: KeybuzzCluster, token: str, volume: Path, *args: str, namespace: str = NS, mount: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as in a pod: the ServiceAccount's token, CA and namespace mounted where a pod has them."""
    cp = cluster.control_plane
    pod = volume.parent / "pod"
    pod.mkdir(exist_ok=True)
    (pod / "token").write_text(token)
    (pod / "ca.crt").write_bytes((cp.pki_dir / "ca.crt").read_bytes())
    (pod / "namespace").write_text(namespace)
    sa = "/run/secrets/kubernetes.io/serviceaccount"
    setup = "mount -t tmpfs kbf-pod /run && mkdir -p /run/secrets/kubernetes.io /run/state"
    if mount:
        setup += f" && mkdir -p {sa} && cp {shlex.quote(str(pod))}/* {sa}/"
    setup += f" && mount --bind {shlex.quote(str(volume))} /run/state"
    command = shlex.join([sys.executable, "-m", "keybuzz_fix", *args])
    home = volume.parent / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(cp.apiserver_port),
        "KEYBUZZ_FIX_STATE_DIR": "/run/state",
        "COLUMNS": "400",
    }
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{setup} && exec {command}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(ROOT),
        check=False,
    )


def test_in_cluster_with_the_shipped_service_account(
    keybuzz_cluster: KeybuzzCluster, shipped_rbac: None, tmp_path: Path
) -> None:
    api = keybuzz_cluster.api_client
    account = manifest("job.yaml", ("ServiceAccount", "ClusterRoleBinding", "RoleBinding"))
    remove = apply_objects(api, account)
    try:
        for obj in manifest("job.yaml", ("PersistentVolumeClaim", "Job")):  # the API accepts them as shipped
            create = {
                "PersistentVolumeClaim": client.CoreV1Api(api).create_namespaced_persistent_volume_claim,
                "Job": client.BatchV1Api(api).create_namespaced_job,
            }[obj["kind"]]
            create(obj["metadata"]["namespace"], obj, dry_run="All")
        token = sa_token(api, "keybuzz-fix", NS)
        volume = tmp_path / "volume"
        volume.mkdir()

        done = run_in_pod(keybuzz_cluster, token, volume, "convert", "--yes", "-o", "json")
        assert done.returncode == 0, done.stderr + done.stdout
        assert "Traceback" not in done.stderr
        (backup,) = (volume / "backups").glob("convert-*.yaml")
        header = backup.read_text().splitlines()[:4]
        uid = client.CoreV1Api(api).read_namespace("kube-system").metadata.uid
        assert f"# server: https://127.0.0.1:{keybuzz_cluster.control_plane.apiserver_port}" in header
        assert f"# cluster: {uid}" in header and f"# namespace: {NS}" in header  # the pod's namespace

        back = run_in_pod(keybuzz_cluster, token, volume, "rollback", "--latest", "--yes", "-o", "json")
        assert back.returncode == 0, back.stderr + back.stdout

        missing = run_in_pod(keybuzz_cluster, token, volume, "convert", "--dry-run", mount=False)
        assert missing.returncode == 2
        assert missing.stderr.strip().splitlines() == [
            "keybuzz-fix: error: in-cluster config (/var/run/secrets/kubernetes.io/serviceaccount): "
            "Service token file does not exist."
        ]
    finally:
        remove()


# -- exec credential plugins -------------------------------------------------------------------

PLUGIN = """\
import json, pathlib, sys
state = pathlib.Path(sys.argv[1])
tokens = json.loads(state.read_text())
calls = state.with_suffix(".calls")
n = int(calls.read_text()) if calls.exists() else 0
calls.write_text(str(n + 1))
status = dict(tokens[min(n, len(tokens) - 1)])
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}))
"""


@dataclass
class Plugin:
    state: Path
    kubeconfig: Path

    @property
    def calls(self) -> int:
        path = self.state.with_suffix(".calls")
        return int(path.read_text()) if path.exists() else 0


@pytest.fixture
def exec_account(keybuzz_cluster: KeybuzzCluster) -> Iterator[Callable[[str], str]]:
    """A ServiceAccount allowed everything; returns a maker of its tokens, each bound to a Secret of its own."""
    api = keybuzz_cluster.api_client
    core = client.CoreV1Api(api)
    name = "kbf-exec"
    remove = apply_objects(
        api,
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NS}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}],
            },
        ],
    )
    made: list[str] = []

    def token(secret: str) -> str:
        core.create_namespaced_secret(NS, {"metadata": {"name": secret}, "stringData": {"for": "a bound token"}})
        made.append(secret)
        return sa_token(api, name, NS, bound_secret=secret)

    try:
        yield token
    finally:
        for secret in made:
            try:
                core.delete_namespaced_secret(secret, NS)
            except ApiException as e:
                if e.status != 404:
                    raise
        remove()


def plugin(cluster: KeybuzzCluster, tmp_path: Path, tokens: list[dict[str, str]]) -> Plugin:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    state = tmp_path / "tokens.json"
    state.write_text(json.dumps(tokens))
    user = {
        "client-certificate-data": None,
        "client-key-data": None,
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script), str(state)],
            "interactiveMode": "Never",
        },
    }
    return Plugin(state, edited(cluster.kubeconfig, tmp_path / "exec.kubeconfig", user=user))


def revoke(cluster: KeybuzzCluster, secret: str, token: str) -> None:
    """Delete the Secret a token is bound to, and wait until the API server refuses the token."""
    client.CoreV1Api(cluster.api_client).delete_namespaced_secret(secret, NS)
    cfg = client.Configuration()
    cfg.host = cluster.control_plane.server
    cfg.ssl_ca_cert = str(cluster.control_plane.pki_dir / "ca.crt")
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as api:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.CoreV1Api(api).list_namespaced_service_account(NS)
            except ApiException as e:
                if e.status == 401:
                    return
            assert time.monotonic() < deadline, "the API server still takes the revoked token"
            time.sleep(0.2)


def expires_in(seconds: float) -> str:
    # the kubernetes client takes a token as expired 5 minutes before its expirationTimestamp
    when = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5, seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_an_exec_plugin_token_that_expires_during_a_long_wait_is_refreshed(
    keybuzz_cluster: KeybuzzCluster, exec_account: Callable[[str], str], tmp_path: Path
) -> None:
    first, second = exec_account("kbf-exec-1"), exec_account("kbf-exec-2")
    p = plugin(
        keybuzz_cluster,
        tmp_path,
        [
            {"token": first, "expirationTimestamp": expires_in(3)},
            {"token": second, "expirationTimestamp": expires_in(600)},
        ],
    )
    kube = from_kubeconfig(p.kubeconfig)
    items, version = kube.list_with_version("Deployment", NS)
    assert items and p.calls == 1
    start = time.monotonic()
    events = list(kube.watch("Deployment", NS, resource_version=version, timeout=5))  # the long wait
    assert time.monotonic() - start >= 4 and not any(kind == "ERROR" for kind, _ in events)
    revoke(keybuzz_cluster, "kbf-exec-1", first)  # the first token is no good anywhere now
    assert kube.list("Deployment", NS) and p.calls == 2  # expired: the plugin ran again, before the request
    assert kube.list("Deployment", NS) and p.calls == 2  # and its new token is kept while it is valid


def test_a_token_refused_with_401_gets_the_plugin_run_again(
    keybuzz_cluster: KeybuzzCluster, exec_account: Callable[[str], str], tmp_path: Path
) -> None:
    first, second = exec_account("kbf-exec-3"), exec_account("kbf-exec-4")
    p = plugin(keybuzz_cluster, tmp_path, [{"token": first}, {"token": second}])  # no expiry said
    kube = from_kubeconfig(p.kubeconfig)
    assert kube.list("Deployment", NS) and p.calls == 1
    revoke(keybuzz_cluster, "kbf-exec-3", first)
    assert kube.list("Deployment", NS) and p.calls == 2  # 401, then once more with the plugin's new token


def test_a_failing_exec_plugin_is_one_line(keybuzz_cluster: KeybuzzCluster, tmp_path: Path) -> None:
    user = {
        "client-certificate-data": None,
        "client-key-data": None,
        "exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "false", "interactiveMode": "Never"},
    }
    broken = edited(keybuzz_cluster.kubeconfig, tmp_path / "broken", user=user)
    result = cli("convert", "--dry-run", "--kubeconfig", str(broken))
    assert result.exit_code == 2
    assert "exec: process returned 1" in one_error(result)


# -- the namespace ----------------------------------------------------------------------------


def test_the_namespace_is_the_flag_then_the_config_then_the_context(
    keybuzz_cluster: KeybuzzCluster, tmp_path: Path
) -> None:
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    core.create_namespace({"metadata": {"name": "kbf-apps"}})
    try:
        apps = edited(keybuzz_cluster.kubeconfig, tmp_path / "apps", context={"namespace": "kbf-apps"})
        result = cli("convert", "--dry-run", "--kubeconfig", str(apps))
        assert result.exit_code != 0 and "kbf-apps" in result.output  # the context's: nothing to convert there
        result = cli("convert", "--dry-run", "--kubeconfig", str(apps), "-n", NS, "-o", "json")
        assert result.exit_code == 0, result.output
        config = tmp_path / "config.yaml"
        config.write_text(f"namespace: {NS}\n")
        result = cli("convert", "--dry-run", "--kubeconfig", str(apps), "--config", str(config), "-o", "json")
        assert result.exit_code == 0, result.output
        assert {c["namespace"] for c in json.loads(result.stdout)["changes"] if c["kind"] == "DaemonSet"} == {NS}
    finally:
        core.delete_namespace("kbf-apps")
