"""The Kubernetes API client: the typed reads, watches and writes of the tool, speaking in dicts.

Objects are plain dicts, exactly as the API serves them, so a pod template is carried over
byte for byte (no generated model drops or renames a field). Each call is one request of
:class:`~keybuzz_fix.cluster.rest.RestClient` (credentials, impersonation, deadline, errors);
where each kind lives is in :mod:`keybuzz_fix.cluster.resources`.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from keybuzz_fix.cluster.deadline import CURRENT, Deadline
from keybuzz_fix.cluster.objects import Obj, meta_of
from keybuzz_fix.cluster.resources import IDENTITY_NAMESPACE, RESOURCES
from keybuzz_fix.cluster.rest import RestClient
from keybuzz_fix.errors import ClusterError

FIELD_MANAGER = "keybuzz-fix"
# Asks for an object's metadata only: whether a Secret exists, never its keys.
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


class Kube(RestClient):
    """A connection to one API server, speaking in dicts."""

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
        deadline = Deadline(timeout + 10)
        CURRENT.deadline = deadline
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
            CURRENT.deadline = None
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


def _write_query(dry_run: bool, **extra: str) -> dict[str, str]:
    """Return the query of a write: field manager keybuzz-fix, and the server-side dry run when asked."""
    return {"fieldManager": FIELD_MANAGER, **extra, **({"dryRun": "All"} if dry_run else {})}
