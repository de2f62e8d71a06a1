"""The Kubernetes API client: the only module that talks HTTP to the API server.

Objects are plain dicts, exactly as the API serves them, so a pod template is carried over
byte for byte (no generated model drops or renames a field). Requests go through the urllib3
pool :mod:`keybuzz_fix.cluster.connect` built from the kubernetes client's own Configuration
(TLS, client certificates, proxy-url), with the credentials it hands over fresh for each request
(exec plugins and token files refreshed as they expire; after a 401, once more) and the
impersonation headers (``--as``, ``--as-group``, the kubeconfig's ``as``). Every failure becomes
one of the tool's errors: a 403 names the verb, resource and namespace that were refused.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from keybuzz_fix.cluster.objects import Obj, mask_values, meta_of
from keybuzz_fix.errors import ClusterError, Conflict, Forbidden, one_line, redact, redact_credentials
from keybuzz_fix.hints import hint

FIELD_MANAGER = "keybuzz-fix"
# How the API server words an RBAC refusal: 'User "x" cannot create resource "ingresses" in API group ...'
_DENIED = re.compile(r'cannot ([a-z]+) resource "([a-z0-9.-]+)"(?: in API group "([a-z0-9.-]*)")?')
# ... and a refused impersonation: 'User "x" cannot impersonate resource "users" ...' (1.36 also says
# 'cannot impersonate-on:user-info:get resource "daemonsets"' for its constrained impersonation)
_NO_IMPERSONATION = re.compile(r'User "([^"]*)" cannot (impersonate[a-z:-]*) resource "([a-z0-9.-]+)"')


TRACE = logging.getLogger("keybuzz_fix.trace")  # -v: each API request on one line; -vv: and its bodies


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    group_version: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        """Return the API group (empty for the core group)."""
        return self.group_version.rpartition("/")[0]

    @property
    def qualified(self) -> str:
        """Return the plural with its group, as RBAC names it (``ingresses.networking.k8s.io``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

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
    "ReplicaSet": Resource("apps/v1", "replicasets"),
    "Service": Resource("v1", "services"),
    "Pod": Resource("v1", "pods"),
    "Endpoints": Resource("v1", "endpoints"),
    "NetworkPolicy": Resource("networking.k8s.io/v1", "networkpolicies"),
    "Event": Resource("v1", "events"),
    "Node": Resource("v1", "nodes", namespaced=False),
    "HorizontalPodAutoscaler": Resource("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": Resource("policy/v1", "poddisruptionbudgets"),
    "Ingress": Resource("networking.k8s.io/v1", "ingresses"),
    "Lease": Resource("coordination.k8s.io/v1", "leases"),
    "Namespace": Resource("v1", "namespaces", namespaced=False),
    "IngressClass": Resource("networking.k8s.io/v1", "ingressclasses", namespaced=False),
    "Secret": Resource("v1", "secrets"),
}
# Asks for an object's metadata only: whether a Secret exists, never its keys.
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
IDENTITY_NAMESPACE = "kube-system"  # its uid names a cluster: it is made once, with the cluster, and never deleted


def _no_credentials() -> str | None:
    return None


@dataclass(frozen=True)
class Endpoint:
    """How to reach and authenticate to one API server, as :mod:`.connect` read it from a kubeconfig."""

    server: str
    pool: Any  # a urllib3 PoolManager (or ProxyManager): TLS, client certificate and proxy are its business
    source: str = "kubeconfig"
    authorization: Callable[[], str | None] = _no_credentials  # the Authorization header, fresh for each request
    reauthorize: Callable[[], bool] | None = None  # after a 401: fetch new credentials; whether they changed
    impersonate: tuple[tuple[str, str], ...] = ()  # Impersonate-User / -Group / -Uid / -Extra-* headers
    namespace: str | None = None  # the context's namespace (or the pod's, in cluster)
    secrets: tuple[str, ...] = ()  # never echoed in an error (tokens a server may send back)
    keepalive: Any = field(default=None, compare=False)  # what the connection runs through (an SSH tunnel)

    @property
    def user(self) -> str | None:
        """The user impersonated (``--as``), for messages."""
        return next((value for name, value in self.impersonate if name == "Impersonate-User"), None)


class Kube:
    """A connection to one API server, speaking in dicts."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._http = endpoint.pool
        if hasattr(self._http, "pool_classes_by_scheme"):  # each request's sockets under its deadline
            http_pool, https_pool = _watching_pools()
            self._http.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}
        self._identity: str | None = None
        self._sent: set[str] = set()  # the credentials sent so far, never to be echoed

    # -- reads ------------------------------------------------------------------------------
    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """Return one object, or ``None`` when it does not exist."""
        return self._request(
            "GET", RESOURCES[kind].path(namespace, name), what=("get", kind, namespace, name), missing_ok=True
        )

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Whether an object exists; only its metadata crosses the wire (a Secret's data never does)."""
        found = self._request(
            "GET",
            RESOURCES[kind].path(namespace, name),
            what=("get", kind, namespace, name),
            missing_ok=True,
            accept=_METADATA_ONLY,
        )
        return found is not None

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[Obj]:
        """Return every object of ``kind`` (in ``namespace``), each with its kind set."""
        items, _version = self.list_with_version(kind, namespace, selector)
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
        return body.get("items") or [], str(meta_of(body).get("resourceVersion", ""))

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
        # The server ends the watch after timeoutSeconds; a stream that trickles on past that (a
        # proxy in between, a broken server) is cut 10 s later, and the watch ends as if it had.
        deadline = _Deadline(timeout + 10)
        _CURRENT.deadline = deadline
        try:
            resp = self._send(
                "GET",
                url,
                preload_content=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=timeout + 10),
            )
        except urllib3.exceptions.HTTPError as e:
            deadline.cancel()
            raise self._unreachable(e) from e
        finally:
            _CURRENT.deadline = None
        try:
            if resp.status >= 400:
                self._raise(resp.status, resp.read(), ("watch", kind, namespace, None))
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf and not deadline.expired:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]
                if deadline.expired:
                    return
        except urllib3.exceptions.HTTPError as e:
            if deadline.expired:
                return
            raise self._unreachable(e) from e
        finally:
            deadline.cancel()
            resp.release_conn()

    # -- writes -----------------------------------------------------------------------------
    def apply(self, obj: Obj, *, dry_run: bool = False, force: bool = False) -> Obj:
        """Server-side apply ``obj`` as field manager ``keybuzz-fix``."""
        kind, meta = obj["kind"], obj["metadata"]
        body = self._request(
            "PATCH",
            RESOURCES[kind].path(meta.get("namespace"), meta["name"]),
            query=_write_query(dry_run, force="true" if force else "false"),
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
        body = self._request(
            "PATCH",
            RESOURCES[kind].path(namespace, name),
            query=_write_query(dry_run),
            body=patch,
            content_type=content_type,
            what=("patch", kind, namespace, name),
        )
        assert body is not None
        return body

    def create(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Create an object."""
        kind, meta = obj["kind"], obj["metadata"]
        body = self._request(
            "POST",
            RESOURCES[kind].path(meta.get("namespace")),
            query=_write_query(dry_run),
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
    ) -> bool:
        """Delete an object; return False when it was already gone.

        ``uid`` is a precondition: the delete only happens if the object is still the one we
        read (and backed up), never a newer object of the same name.
        """
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
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
    def cluster_identity(self) -> str:
        """Return the cluster's identity: the uid of its kube-system namespace (read once)."""
        if self._identity is None:
            found = self.get("Namespace", IDENTITY_NAMESPACE)
            uid = str(meta_of(found or {}).get("uid") or "")
            if not uid:
                raise ClusterError(
                    f"{self.endpoint.server} has no {IDENTITY_NAMESPACE} namespace: cannot tell which cluster this is"
                )
            self._identity = uid
        return self._identity

    def review(self, review: Obj) -> Obj:
        """Send a SelfSubjectAccessReview; return it with the API server's answer in its status."""
        body = self._request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            body=review,
            what=("create", "SelfSubjectAccessReview", None, None),
        )
        assert body is not None
        return body

    # -- plumbing ---------------------------------------------------------------------------
    def _headers(self, content_type: str | None = None, accept: str = "application/json") -> Any:
        import urllib3

        headers = urllib3.HTTPHeaderDict({"Accept": accept, "User-Agent": "keybuzz-fix"})
        if content_type:
            headers["Content-Type"] = content_type
        authorization = self.endpoint.authorization()
        if authorization:
            headers["Authorization"] = authorization
            self._sent.add(authorization.split(" ", 1)[-1])
        for name, value in self.endpoint.impersonate:  # one header line per group
            headers.add(name, value)
        return headers

    def _send(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send a request; after a 401, once more with fresh credentials (an exec plugin's token may have expired)."""
        content_type = kwargs.pop("content_type", None)
        accept = kwargs.pop("accept", "application/json")
        resp = self._http.request(method, url, headers=self._headers(content_type, accept), **kwargs)
        if resp.status == 401 and self.endpoint.reauthorize is not None and self.endpoint.reauthorize():
            resp.release_conn()
            resp = self._http.request(method, url, headers=self._headers(content_type, accept), **kwargs)
        return resp

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
        accept: str = "application/json",
    ) -> Obj | None:
        import urllib3

        url = self.endpoint.server + path + ("?" + urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        started = time.monotonic()
        deadline = _Deadline(self.timeout)
        _CURRENT.deadline = deadline
        try:
            resp = self._send(
                method,
                url,
                body=data,
                content_type=content_type if data else None,
                accept=accept,
                timeout=urllib3.Timeout(total=self.timeout),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as e:
            TRACE.info("api %s %s -> no answer (%s)", method, url, self._scrub(str(e)))
            if deadline.expired:
                raise self._too_slow(what) from e
            raise self._unreachable(e) from e
        finally:
            deadline.cancel()
            _CURRENT.deadline = None
        if deadline.expired:  # cut mid-answer: what arrived may look whole (headers ended by the cut)
            raise self._too_slow(what)
        self._trace(method, url, body, resp.status, resp.data, time.monotonic() - started)
        if resp.status == 404 and missing_ok:
            return None
        if resp.status >= 400:
            self._raise(resp.status, resp.data, what)
        try:
            result: Obj = json.loads(resp.data) if resp.data else {}
        except ValueError as e:
            raise ClusterError(f"{self.endpoint.server}{path}: the server did not answer JSON") from e
        return result

    def _trace(self, method: str, url: str, sent: Any, status: int, raw: bytes, seconds: float) -> None:
        """Log one API request (``-v``), and with ``-vv`` its bodies: env values masked, credentials redacted."""
        if not TRACE.isEnabledFor(logging.INFO):
            return
        TRACE.info("api %s %s -> %s, %.2f s", method, url, status, seconds)
        if TRACE.isEnabledFor(logging.DEBUG):
            for name, content in (("request", sent), ("response", raw)):
                if content is None or content == b"":
                    continue
                TRACE.debug("api %s body:\n%s", name, self._scrub(_traced_body(content)))

    def _too_slow(self, what: tuple[str, str, str | None, str | None]) -> ClusterError:
        return ClusterError(
            f"no complete answer from the Kubernetes API at {self.endpoint.server} within "
            f"{self.timeout:g} s ({self.endpoint.source}): cannot {what[0]} {what[1]}"
        )

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
            f"{one_line(self._scrub(text))}"
        )

    def _scrub(self, text: str) -> str:
        """Hide the credentials in text a server sent back (a proxy or a broken server may echo them)."""
        secrets = [*self.endpoint.secrets, *self._sent]
        return redact(text, sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def _raise(self, status: int, raw: bytes, what: tuple[str, str, str | None, str | None]) -> None:
        verb, kind, namespace, name = what
        try:
            message = str(json.loads(raw).get("message", ""))
        except (ValueError, AttributeError):
            message = raw[:300].decode("utf-8", "replace")
        message = self._scrub(message)
        target = f"{kind} {name}" if name else kind
        where = f" in namespace {namespace}" if namespace else ""
        if self.endpoint.user:
            where += f" as {self.endpoint.user}"
        if status == 401:
            raise ClusterError(
                f"the Kubernetes API at {self.endpoint.server} rejected the credentials "
                f"({self.endpoint.source}): {message or 'Unauthorized'}"
            )
        if status == 403 and " cannot " not in message:  # admission (quota, pod security), not RBAC
            raise ClusterError(f"cannot {verb} {target}{where}: refused by the API server: {message}")
        impersonation = _NO_IMPERSONATION.search(message) if status == 403 and self.endpoint.user else None
        if impersonation:
            real, denied_verb, resource = impersonation.groups()
            raise Forbidden(
                f"forbidden: {real} may not impersonate {self.endpoint.user} (needed to {verb} {target}{where}); "
                f"grant {real} impersonation, or leave out "
                + hint("--as", "--as / ")
                + f"the kubeconfig's as: {message}",
                permission=f"{denied_verb} {resource}",
            )
        if status == 403:
            res = RESOURCES.get(kind)
            verb_name = {"apply": "patch"}.get(verb, verb)
            plural, group = (res.plural, res.group) if res else (kind, "")
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
                f"apply of {target}{where} conflicts with fields owned by another manager: {message}"
                + hint("--force-conflicts", "; re-run with --force-conflicts to take them over")
            )
        if status == 409:
            raise Conflict(f"cannot {verb} {target}{where}: {message}")
        raise ClusterError(f"cannot {verb} {target}{where}: {status} {message}")


def _traced_body(content: Any) -> str:
    """Return a request or response body for the ``-vv`` trace: env values masked, Secret data and credentials out."""
    if isinstance(content, bytes | bytearray):
        try:
            content = json.loads(content)
        except ValueError:
            return redact_credentials(bytes(content[:2000]).decode("utf-8", "replace"))

    def clean(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj
        if obj.get("kind") == "Secret":
            return {**obj, "data": "<redacted>", "stringData": "<redacted>"}
        if isinstance(obj.get("items"), builtins.list):
            return {**obj, "items": [clean(i) for i in obj["items"]]}
        return mask_values(obj) if isinstance(obj.get("spec"), dict) else obj

    return redact_credentials(json.dumps(clean(content), ensure_ascii=False))


class _Deadline:
    """Shut a request's sockets down when its time is up, whatever the server does.

    urllib3's timeouts bound each wait for a byte, not the request: a server that sends its headers
    or its body a few bytes at a time keeps a request alive for ever. The connection classes of
    :func:`_watching_pools` hand their sockets to the deadline of the request under way in their thread.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            else:
                self._socks.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks, self._socks = self._socks, []
        for sock in socks:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._socks = []


_CURRENT = threading.local()  # the _Deadline of the request this thread is making


def _shut(sock: socket.socket) -> None:
    """Wake whatever waits on ``sock`` (a TLS socket too: the plain shutdown, not the TLS one)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _watched(sock: Any) -> None:
    deadline: _Deadline | None = getattr(_CURRENT, "deadline", None)
    if deadline is not None and isinstance(sock, socket.socket):
        deadline.watch(sock)


def _write_query(dry_run: bool, **extra: str) -> dict[str, str]:
    """Return the query of a write: field manager keybuzz-fix, and the server-side dry run when asked."""
    return {"fieldManager": FIELD_MANAGER, **extra, **({"dryRun": "All"} if dry_run else {})}


@functools.cache
def _watching_pools() -> tuple[Any, Any]:
    """Connection pools whose connections put their sockets under the current request's deadline."""
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class WatchedHttp(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _watched(sock)  # the TCP connect is bounded; this covers the TLS handshake after it
            return sock

        def getresponse(self) -> Any:
            _watched(self.sock)
            return super().getresponse()

    class WatchedHttps(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _watched(sock)
            return sock

        def getresponse(self) -> Any:
            _watched(self.sock)
            return super().getresponse()

    class HttpPool(urllib3.HTTPConnectionPool):
        ConnectionCls = WatchedHttp

    class HttpsPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = WatchedHttps

    return HttpPool, HttpsPool
