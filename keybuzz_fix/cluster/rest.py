"""The REST layer under the Kubernetes API client: one HTTP request to the API server, and its failures.

Requests go through the urllib3 pool :mod:`keybuzz_fix.cluster.connect` built from the kubernetes
client's own Configuration (TLS, client certificates, proxy-url), with the credentials it hands over
fresh for each request (exec plugins and token files refreshed as they expire; after a 401, once
more) and the impersonation headers (``--as``, ``--as-group``, the kubeconfig's ``as``), each under
a :class:`~keybuzz_fix.cluster.deadline.Deadline`. Every failure becomes one of the tool's errors: a
403 names the verb, resource and namespace that were refused. The typed reads and writes on top are
:mod:`keybuzz_fix.cluster.client`'s.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from keybuzz_fix.cluster.deadline import CURRENT, Deadline, watching_pools
from keybuzz_fix.cluster.objects import Obj, mask_values
from keybuzz_fix.cluster.resources import RESOURCES
from keybuzz_fix.errors import ClusterError, Conflict, Forbidden, one_line, redact, redact_credentials
from keybuzz_fix.hints import hint

# How the API server words an RBAC refusal: 'User "x" cannot create resource "ingresses" in API group ...'
_DENIED = re.compile(r'cannot ([a-z]+) resource "([a-z0-9.-]+)"(?: in API group "([a-z0-9.-]*)")?')
# ... and a refused impersonation: 'User "x" cannot impersonate resource "users" ...' (1.36 also says
# 'cannot impersonate-on:user-info:get resource "daemonsets"' for its constrained impersonation)
_NO_IMPERSONATION = re.compile(r'User "([^"]*)" cannot (impersonate[a-z:-]*) resource "([a-z0-9.-]+)"')


TRACE = logging.getLogger("keybuzz_fix.trace")  # -v: each API request on one line; -vv: and its bodies


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


class RestClient:
    """Requests to one API server: credentials, impersonation, deadline, trace, and the tool's errors."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._http = endpoint.pool
        if hasattr(self._http, "pool_classes_by_scheme"):  # each request's sockets under its deadline
            http_pool, https_pool = watching_pools()
            self._http.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}
        self._identity: str | None = None
        self._sent: set[str] = set()  # the credentials sent so far, never to be echoed

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
        deadline = Deadline(self.timeout)
        CURRENT.deadline = deadline
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
            CURRENT.deadline = None
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
