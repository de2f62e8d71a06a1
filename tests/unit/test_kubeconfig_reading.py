"""The kubeconfig read as kubectl reads it, without a cluster: what the connection will send, and to whom.

Building a connection opens nothing: these check the endpoint (server, proxy, impersonation
headers, the context's namespace), the namespace order, in-cluster config, and the backup's
cluster check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from keybuzz_fix.cli.connections import namespaced
from keybuzz_fix.cluster import backup
from keybuzz_fix.cluster.connect import ClusterOptions, context_namespace, from_kubeconfig
from keybuzz_fix.config import load_config
from keybuzz_fix.errors import KubeconfigError, PlanRefused, UsageError
from keybuzz_fix.flows import Connections
from keybuzz_fix.hosts.sshoptions import SshOptions

ROOT = Path(__file__).resolve().parent.parent.parent


def kubeconfig(path: Path, *, cluster: dict | None = None, user: dict | None = None, context: dict | None = None,
               extra_contexts: list | None = None) -> Path:  # fmt: skip
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", **(cluster or {})}}],
        "users": [{"name": "u", "user": {"token": "unit-token-0000", **(user or {})}}],
        "contexts": [
            {"name": "ctx", "context": {"cluster": "c", "user": "u", **(context or {})}},
            *(extra_contexts or []),
        ],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "HTTPS_PROXY", "https_proxy",
                 "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_impersonation_headers_from_the_flags_and_the_kubeconfig(tmp_path: Path) -> None:
    user = {"as": "ops-admin", "as-groups": ["g1", "g2"], "as-uid": "42", "as-user-extra": {"scopes": ["a", "b"]}}
    path = kubeconfig(tmp_path / "k", user=user)
    kube = from_kubeconfig(path)
    assert kube.endpoint.impersonate == (
        ("Impersonate-User", "ops-admin"),
        ("Impersonate-Group", "g1"),
        ("Impersonate-Group", "g2"),
        ("Impersonate-Uid", "42"),
        ("Impersonate-Extra-scopes", "a"),
        ("Impersonate-Extra-scopes", "b"),
    )
    kube = from_kubeconfig(path, impersonate=("other", ("g3",)))
    assert kube.endpoint.impersonate[:2] == (("Impersonate-User", "other"), ("Impersonate-Group", "g3"))
    assert kube.endpoint.user == "other"
    headers = kube._headers()
    assert headers.getlist("Impersonate-Group") == ["g3"] and headers["Authorization"] == "Bearer unit-token-0000"


def test_groups_without_a_user_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="pass --as USER"):
        from_kubeconfig(kubeconfig(tmp_path / "k"), impersonate=(None, ("g",)))
    with pytest.raises(UsageError, match="is not a user or group name"):
        ClusterOptions(impersonate="bad\nname")


def test_proxy_url_and_its_credentials(tmp_path: Path) -> None:
    kube = from_kubeconfig(kubeconfig(tmp_path / "k", cluster={"proxy-url": "http://me:s3cret-pw@198.18.0.9:3128"}))
    assert kube.endpoint.source.endswith(", proxy http://198.18.0.9:3128")
    assert "s3cret-pw" in kube.endpoint.secrets and "s3cret-pw" not in kube.endpoint.source
    assert type(kube.endpoint.pool).__name__ == "ProxyManager"


def test_the_environment_s_proxy_as_kubectl_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://198.18.0.9:3128")
    kube = from_kubeconfig(kubeconfig(tmp_path / "k"))
    assert kube.endpoint.source.endswith(", proxy http://198.18.0.9:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert ", proxy " not in from_kubeconfig(kubeconfig(tmp_path / "k")).endpoint.source


def test_the_context_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "elsewhere"}}
    path = kubeconfig(tmp_path / "k", context={"namespace": "apps"}, extra_contexts=[other])
    assert context_namespace(ClusterOptions(kubeconfig=path)) == "apps"
    assert context_namespace(ClusterOptions(kubeconfig=path, context="other")) == "elsewhere"
    assert from_kubeconfig(path).endpoint.namespace == "apps"
    first = kubeconfig(tmp_path / "first", context={"namespace": "first-wins"})
    monkeypatch.setenv("KUBECONFIG", f"{first}:{path}")
    assert context_namespace(ClusterOptions()) == "first-wins"
    assert context_namespace(ClusterOptions(kubeconfig=tmp_path / "missing")) is None  # said at connection


def test_the_namespace_order(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "k", context={"namespace": "apps"})
    cfg = load_config()
    given = tmp_path / "config.yaml"
    given.write_text("namespace: from-config\n")

    def chosen(namespace: str | None, config_file: Path | None) -> str:
        reach = Connections(SshOptions(ssh_config=None), cluster=ClusterOptions(kubeconfig=path, namespace=namespace))
        return namespaced(load_config(config_file) if config_file else cfg, config_file, reach).namespace

    assert chosen("flag", given) == "flag"
    assert chosen(None, given) == "from-config"
    assert chosen(None, None) == "apps"
    path.write_text(path.read_text().replace("namespace: apps", "foo: bar"))
    assert chosen(None, None) == "keybuzz"  # manifests/defaults.yaml


def test_in_cluster_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KubeconfigError, match="no kubeconfig found: .* or run in a pod"):
        from_kubeconfig()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.43.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeconfigError, match="in-cluster config .*: Service token file does not exist"):
        from_kubeconfig()
    with pytest.raises(UsageError, match="--context needs a kubeconfig"):
        from_kubeconfig(context="x")


def saved(tmp_path: Path, cluster: str) -> backup.Backup:
    return backup.Backup(tmp_path / "convert-1.yaml", "convert", "https://a:6443", "keybuzz", [], cluster)


def test_the_backup_s_cluster_check(tmp_path: Path) -> None:
    assert backup.cluster_check(saved(tmp_path, "uid-a"), "uid-a", "https://b:6443") is None  # another address
    with pytest.raises(PlanRefused, match="taken from another cluster .* refusing to restore it here"):
        backup.cluster_check(saved(tmp_path, "uid-a"), "uid-b", "https://b:6443")
    forced = backup.cluster_check(saved(tmp_path, "uid-a"), "uid-b", "https://b:6443", force=True)
    assert forced is not None and forced.endswith("restoring it anyway (--force-cluster)")
    old = backup.cluster_check(saved(tmp_path, ""), "uid-b", "https://b:6443")
    assert old is not None and "records no cluster identity" in old


def test_the_backup_header_carries_the_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(tmp_path / "state"))
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "keybuzz"}}
    path = backup.write([obj], command="convert", server="https://a:6443", namespace="keybuzz", cluster="uid-a")
    again = backup.read_backup(path)
    assert (again.server, again.cluster, again.namespace, len(again.objects)) == (
        "https://a:6443",
        "uid-a",
        "keybuzz",
        1,
    )
