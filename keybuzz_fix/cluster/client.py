"""The Kubernetes API boundary: the only module that talks HTTP to the cluster.

Objects are plain dicts, exactly as the API serves them, so a pod template is carried over
byte for byte (no generated model drops or renames a field). The kubernetes client is used for
what it is best at — reading kubeconfig files (contexts, exec plugins, tokens) — and the requests
go through urllib3 with TLS always verified. Every failure becomes one of the tool's errors:
a 403 names the verb, resource and namespace that were refused.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from keybuzz_fix.errors import ClusterError, Conflict, Forbidden, KubeconfigError

if TYPE_CHECKING:
    import urllib3

FIELD_MANAGER = "keybuzz-fix"
# How the API server words an RBAC refusal: 'User "x" cannot create resource "ingresses" in API group ...'
_DENIED = re.compile(r'cannot ([a-z]+) resource "([a-z0-9.-]+)"(?: in API group "([a-z0-9.-]*)")?')
Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    group_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """Return the URL path of the collection, or of one object."""
        base = "/api/" + self.group_version if "/" not in self.group_version else "/apis/" + self.group_version
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base + (f"/{name}" if name else "")


RESOURCES: dict[str, Resource] = {
    "Deployment": Resource("apps/v1", "deployments"),
    "DaemonSet": Resource("apps/v1", "daemonsets"),
    "StatefulSet": Resource("apps/v1", "statefulsets"),
    "ControllerRevision": Resource("apps/v1", "controllerrevisions"),
    "ReplicaSet": Resource("apps/v1", "replicasets"),
    "Service": Resource("v1", "services"),
    "Pod": Resource("v1", "pods"),
    "Event": Resource("v1", "events"),
    "Node": Resource("v1", "nodes", namespaced=False),
    "Namespace": Resource("v1", "namespaces", namespaced=False),
    "Secret": Resource("v1", "secrets"),
    "ConfigMap": Resource("v1", "configmaps"),
    "HorizontalPodAutoscaler": Resource("autoscaling/v2", "horizontalpodautoscalers"),
    "Ingress": Resource("networking.k8s.io/v1", "ingresses"),
    "IngressClass": Resource("networking.k8s.io/v1", "ingressclasses", namespaced=False),
}


@dataclass(frozen=True)
class Endpoint:
    """How to reach and authenticate to one API server."""

    server: str
    ca_file: str | None = None
    ca_data: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    source: str = "kubeconfig"


class Kube:
    """A connection to one API server, speaking in dicts."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._http = _pool(endpoint)

    # -- reads ------------------------------------------------------------------------------
    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """Return one object, or ``None`` when it does not exist."""
        return self._request(
            "GET", RESOURCES[kind].path(namespace, name), what=("get", kind, namespace, name), missing_ok=True
        )

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[Obj]:
        """Return every object of ``kind`` (in ``namespace``), each with its kind set."""
        query = {"labelSelector": selector} if selector else None
        body = self._request("GET", RESOURCES[kind].path(namespace), query=query, what=("list", kind, namespace, None))
        assert body is not None
        items: list[Obj] = body.get("items") or []
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", RESOURCES[kind].group_version)
        return items

    def list_with_version(
        self, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> tuple[builtins.list[Obj], str]:
        """Return the objects and the list's resourceVersion, to start a watch from."""
        query = {"labelSelector": selector} if selector else None
        body = self._request("GET", RESOURCES[kind].path(namespace), query=query, what=("list", kind, namespace, None))
        assert body is not None
        return body.get("items") or [], str(body.get("metadata", {}).get("resourceVersion", ""))

    def watch(
        self,
        kind: str,
        namespace: str | None,
        *,
        resource_version: str,
        selector: str | None = None,
        timeout: float = 60.0,
    ) -> Iterator[tuple[str, Obj]]:
        """Yield ``(event type, object)`` until the server ends the watch (after ``timeout`` seconds)."""
        import urllib3

        query: dict[str, str] = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(1, int(timeout))),
            "allowWatchBookmarks": "true",
        }
        if selector:
            query["labelSelector"] = selector
        url = self.endpoint.server + RESOURCES[kind].path(namespace) + "?" + urlencode(query)
        try:
            resp = self._http.request(
                "GET",
                url,
                headers=self._headers(),
                preload_content=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=timeout + 10),
            )
        except urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from e
        try:
            if resp.status >= 400:
                self._raise(resp.status, resp.read(), ("watch", kind, namespace, None))
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]
        except urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from e
        finally:
            resp.release_conn()

    # -- writes -----------------------------------------------------------------------------
    def apply(self, obj: Obj, *, dry_run: bool = False, force: bool = False) -> Obj:
        """Server-side apply ``obj`` as field manager ``keybuzz-fix``."""
        kind, meta = obj["kind"], obj["metadata"]
        query = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        if dry_run:
            query["dryRun"] = "All"
        body = self._request(
            "PATCH",
            RESOURCES[kind].path(meta.get("namespace"), meta["name"]),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
            what=("apply", kind, meta.get("namespace"), meta["name"]),
        )
        assert body is not None
        return body

    def patch(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Obj | builtins.list[Any],
        *,
        patch_type: str = "strategic",
        dry_run: bool = False,
    ) -> Obj:
        """Patch an object in place (strategic, merge or json patch)."""
        content_type = {
            "strategic": "application/strategic-merge-patch+json",
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
        }[patch_type]
        query = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            query["dryRun"] = "All"
        body = self._request(
            "PATCH",
            RESOURCES[kind].path(namespace, name),
            query=query,
            body=patch,
            content_type=content_type,
            what=("patch", kind, namespace, name),
        )
        assert body is not None
        return body

    def create(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Create an object."""
        kind, meta = obj["kind"], obj["metadata"]
        query = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            query["dryRun"] = "All"
        body = self._request(
            "POST",
            RESOURCES[kind].path(meta.get("namespace")),
            query=query,
            body=obj,
            what=("create", kind, meta.get("namespace"), meta["name"]),
        )
        assert body is not None
        return body

    def delete(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        *,
        dry_run: bool = False,
        uid: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete an object; return False when it was already gone.

        ``uid`` is a precondition: the delete only happens if the object is still the one we
        read (and backed up), never a newer object of the same name.
        """
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            options["preconditions"] = {"uid": uid}
        if dry_run:
            options["dryRun"] = ["All"]
        body = self._request(
            "DELETE",
            RESOURCES[kind].path(namespace, name),
            body=options,
            what=("delete", kind, namespace, name),
            missing_ok=True,
        )
        return body is not None

    # -- identity ---------------------------------------------------------------------------
    def can_i(self, verb: str, kind: str, namespace: str | None, name: str | None = None) -> bool:
        """Ask the API whether the current identity may do ``verb`` on ``kind``."""
        res = RESOURCES[kind]
        group = res.group_version.split("/")[0] if "/" in res.group_version else ""
        attrs: Obj = {"verb": verb, "group": group, "resource": res.plural}
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        }
        body = self._request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body=review,
            what=("create", "SelfSubjectAccessReview", None, None),
        )
        assert body is not None
        return bool(body.get("status", {}).get("allowed"))

    def version(self) -> str:
        """Return the server's gitVersion (a cheap reachability check)."""
        body = self._request("GET", "/version", what=("get", "version", None, None))
        assert body is not None
        return str(body.get("gitVersion", "?"))

    # -- plumbing ---------------------------------------------------------------------------
    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "keybuzz-fix"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        return headers

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: tuple[str, str, str | None, str | None],
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> Obj | None:
        import urllib3

        url = self.endpoint.server + path + ("?" + urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        try:
            resp = self._http.request(
                method,
                url,
                body=data,
                headers=self._headers(content_type if data else None),
                timeout=urllib3.Timeout(total=self.timeout),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from e
        if resp.status == 404 and missing_ok:
            return None
        if resp.status >= 400:
            self._raise(resp.status, resp.data, what)
        try:
            result: Obj = json.loads(resp.data) if resp.data else {}
        except ValueError as e:
            raise ClusterError(f"{self.endpoint.server}{path}: the server did not answer JSON") from e
        return result

    def _unreachable(self, e: Exception) -> ClusterError:
        reason = getattr(e, "reason", None) or e
        text = str(reason)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return ClusterError(
                f"TLS verification of the Kubernetes API at {self.endpoint.server} failed "
                f"({self.endpoint.source}): {text.split('certificate verify failed:')[-1].strip(' )')}"
            )
        return ClusterError(
            f"cannot reach the Kubernetes API at {self.endpoint.server} ({self.endpoint.source}): "
            f"{_short(self._scrub(text))}"
        )

    def _scrub(self, text: str) -> str:
        """Hide the credentials in text a server sent back (a proxy or a broken server may echo them)."""
        return _redact(text, [self.endpoint.token] if self.endpoint.token else [])

    def _raise(self, status: int, raw: bytes, what: tuple[str, str, str | None, str | None]) -> None:
        verb, kind, namespace, name = what
        try:
            message = str(json.loads(raw).get("message", ""))
        except (ValueError, AttributeError):
            message = raw[:300].decode("utf-8", "replace")
        message = self._scrub(message)
        target = f"{kind} {name}" if name else kind
        where = f" in namespace {namespace}" if namespace else ""
        if status == 401:
            raise ClusterError(
                f"the Kubernetes API at {self.endpoint.server} rejected the credentials "
                f"({self.endpoint.source}): {message or 'Unauthorized'}"
            )
        if status == 403 and " cannot " not in message:  # admission (quota, pod security), not RBAC
            raise ClusterError(f"cannot {verb} {target}{where}: refused by the API server: {message}")
        if status == 403:
            plural = RESOURCES[kind].plural if kind in RESOURCES else kind
            verb_name = {"apply": "patch"}.get(verb, verb)
            group = RESOURCES[kind].group_version.rpartition("/")[0] if kind in RESOURCES else ""
            denied = _DENIED.search(message)  # what RBAC checked: an apply that creates needs "create"
            if denied:
                verb_name, plural, group = denied.group(1), denied.group(2), denied.group(3) or ""
            raise Forbidden(
                f"forbidden: cannot {verb_name} {plural}{where} (needed to {verb} {target}); "
                f"grant it (see manifests/rbac.yaml): {message}",
                permission=f"{verb_name} {plural}{'.' + group if group else ''}{where}",
            )
        if status == 409 and verb == "apply":
            raise Conflict(
                f"apply of {target}{where} conflicts with fields owned by another manager: {message}; "
                "re-run with --force-conflicts to take them over"
            )
        if status == 409:
            raise Conflict(f"cannot {verb} {target}{where}: {message}")
        raise ClusterError(f"cannot {verb} {target}{where}: {status} {message}")


def load(kubeconfig: Path | None = None, context: str | None = None, timeout: float = 30.0) -> Kube:
    """Connect using standard kubeconfig resolution (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``)."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig is not None:
        paths = [kubeconfig.expanduser()]
        if not paths[0].is_file():
            raise KubeconfigError(f"--kubeconfig {kubeconfig}: no such file")
    else:
        env = os.environ.get("KUBECONFIG", "")
        paths = [Path(p).expanduser() for p in env.split(os.pathsep) if p] or [Path("~/.kube/config").expanduser()]
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise KubeconfigError(
                "no kubeconfig found: pass --kubeconfig FILE, set KUBECONFIG, or use "
                "--kubeconfig-from-master to read it from the first K3s master over SSH"
            )
    source = str(paths[0])
    secrets = _kubeconfig_secrets(paths)
    cfg = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.pathsep.join(map(str, paths)),
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
    except ConfigException as e:
        raise KubeconfigError(f"{source}: {_short(_redact(str(e), secrets))}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise KubeconfigError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or 'invalid'}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # the client's reading of odd shapes
        raise KubeconfigError(
            f"{source}: not a usable kubeconfig ({e.__class__.__name__}: {_short(_redact(str(e), secrets))})"
        ) from None
    token = None
    for key in ("BearerToken", "authorization"):
        value = (cfg.api_key or {}).get(key)
        if value:
            token = value.removeprefix("Bearer ").strip()
            break
    endpoint = Endpoint(
        server=_server_url(cfg.host, source),
        ca_file=cfg.ssl_ca_cert,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        token=token,
        verify=bool(cfg.verify_ssl),
        tls_server_name=getattr(cfg, "tls_server_name", None),
        source=f"kubeconfig {source}" + (f", context {context}" if context else ""),
    )
    return Kube(endpoint, timeout)


def from_k3s_yaml(text: str, server_ip: str, source: str, timeout: float = 30.0) -> Kube:
    """Connect with a K3s ``k3s.yaml`` held in memory, pointed at ``https://server_ip:6443``.

    The client key never touches the disk: it is handed to OpenSSL through an anonymous
    in-memory file.
    """
    import base64

    import yaml

    try:
        data = yaml.safe_load(text)
        cluster = data["clusters"][0]["cluster"]
        user = data["users"][0]["user"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as e:
        raise KubeconfigError(f"{source}: not a K3s kubeconfig ({e.__class__.__name__})") from None
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    cert_file = key_file = None
    token = user.get("token")
    if "client-certificate-data" in user and "client-key-data" in user:
        cert_file = _memfile("cert", base64.b64decode(user["client-certificate-data"]))
        key_file = _memfile("key", base64.b64decode(user["client-key-data"]))
    return Kube(
        Endpoint(
            server=f"https://{host}:6443",
            ca_data=ca,
            cert_file=cert_file,
            key_file=key_file,
            token=token,
            source=source,
        ),
        timeout,
    )


def k3s_yaml_for(text: str, server_ip: str) -> str:
    """Return the k3s.yaml text pointed at ``server_ip`` (for ``--save-kubeconfig``)."""
    import yaml

    data = yaml.safe_load(text)
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    for c in data.get("clusters", []):
        c["cluster"]["server"] = f"https://{host}:6443"
    return str(yaml.safe_dump(data, sort_keys=False))


def _memfile(name: str, content: bytes) -> str:
    """Return a path to ``content`` that lives only in memory (memfd), or a private temp file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"keybuzz-fix-{name}", 0)
        os.write(fd, content)
        return f"/proc/self/fd/{fd}"
    fd, path = tempfile.mkstemp(prefix="keybuzz-fix-")  # pragma: no cover - non-Linux
    os.write(fd, content)
    os.close(fd)
    return path


def _server_url(url: str, source: str) -> str:
    """Check a kubeconfig's server URL: http(s) with a host, and no credentials in it (never echoed)."""
    from urllib.parse import urlsplit

    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" in authority:
        raise KubeconfigError(
            f"{source}: the server URL carries credentials (user:password@); put them in "
            "the kubeconfig's user entry instead"
        )
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("https", "http") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # a port that is not a number, or out of range
        ok = False
    if not ok:
        raise KubeconfigError(f"{source}: server {_short(url)!r} is not an https:// or http:// URL")
    return url.rstrip("/")


def _pool(endpoint: Endpoint) -> urllib3.PoolManager:
    import urllib3

    ctx = ssl.create_default_context()
    if endpoint.ca_file or endpoint.ca_data:
        try:
            ctx = ssl.create_default_context(cafile=endpoint.ca_file, cadata=endpoint.ca_data)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise KubeconfigError(
                f"{endpoint.source}: cannot load the certificate authority: {_short(str(e))}"
            ) from None
    if not endpoint.verify:  # only when the kubeconfig itself says insecure-skip-tls-verify
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if endpoint.cert_file and endpoint.key_file:
        try:
            ctx.load_cert_chain(endpoint.cert_file, endpoint.key_file)
        except (ssl.SSLError, OSError) as e:
            raise KubeconfigError(f"{endpoint.source}: cannot load the client certificate: {e}") from None
    kwargs: dict[str, Any] = {}
    if not endpoint.verify:
        kwargs.update(cert_reqs="CERT_NONE", assert_hostname=False)
    if endpoint.tls_server_name:
        kwargs["server_hostname"] = endpoint.tls_server_name
    return urllib3.PoolManager(num_pools=4, maxsize=16, ssl_context=ctx, **kwargs)


def _kubeconfig_secrets(paths: builtins.list[Path]) -> builtins.list[str]:
    """Return every string under the ``users`` entries of the kubeconfig files: tokens, passwords, keys."""
    import yaml

    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 4:
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, builtins.list):
            for v in value:
                walk(v)

    for path in paths:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        users = data.get("users") if isinstance(data, dict) else None
        for entry in users if isinstance(users, builtins.list) else []:
            walk(entry.get("user") if isinstance(entry, dict) else entry)
    return sorted(found, key=len, reverse=True)


def _redact(text: str, secrets: builtins.list[str]) -> str:
    """Replace each secret in ``text``, and cut the object dumps the kubernetes client appends to its errors."""
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text.split("{'", 1)[0].rstrip(" /") if "{'" in text else text


def _short(text: str) -> str:
    return " ".join(text.split())[:300]
