"""Who else owns or reconciles an object, and the metadata by which they track it (pure code).

convert deletes Deployments and HPAs and patches Services. When another controller owns or
reconciles one of them, it undoes that: KEDA re-creates the HPA of its ScaledObject, the next
``helm upgrade`` or Argo CD / Flux sync re-creates the Deployment and the HPA and resets the
Service. So before changing an object the plan reads, from the object itself:

- a controller ``ownerReference`` (a KEDA ScaledObject owning an HPA, an operator's resource);
- Helm release metadata (``meta.helm.sh/release-*``, ``app.kubernetes.io/managed-by: Helm``,
  ``helm.sh/chart``, Helm 2's ``heritage``);
- Argo CD tracking (``argocd.argoproj.io/tracking-id``, ``argocd.argoproj.io/instance``);
- Flux tracking (``kustomize.toolkit.fluxcd.io/*``, ``helm.toolkit.fluxcd.io/*`` labels);
- the k3s deploy controller's ``objectset.rio.cattle.io/*`` (manifests in
  ``/var/lib/rancher/k3s/server/manifests``, re-applied when k3s starts);
- ``managedFields`` managers that reconcile (``helm``, ``argocd-controller``,
  ``kustomize-controller``, ``helm-controller``, …).

None of that tracking metadata may reach the DaemonSet: a GitOps controller would adopt it (and
reset it) or prune it. :func:`untracked` strips it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.cluster.objects import Obj, describe_object, labels_of, meta_of, spec_of
from keybuzz_fix.cluster.scheduling import selector_matches

HELM_RELEASE = "meta.helm.sh/release-name"
HELM_NAMESPACE = "meta.helm.sh/release-namespace"
ARGO_TRACKING_ID = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE = "argocd.argoproj.io/instance"
INSTANCE = "app.kubernetes.io/instance"
_FLUX = {
    "kustomize.toolkit.fluxcd.io": ("Flux Kustomization", "kustomization"),
    "helm.toolkit.fluxcd.io": ("Flux HelmRelease", "helmrelease"),
}
_OBJECTSET = "objectset.rio.cattle.io"
# Label and annotation keys (or key prefixes, ending in "/") that say who deploys and tracks an object.
TRACKING_LABELS = (
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
    "heritage",
    INSTANCE,  # Helm's release name, and Argo CD's tracking label (its default before v3)
    ARGO_INSTANCE,
    "kustomize.toolkit.fluxcd.io/",
    "helm.toolkit.fluxcd.io/",
    f"{_OBJECTSET}/",
)
TRACKING_ANNOTATIONS = (
    "meta.helm.sh/",
    "helm.sh/",
    "argocd.argoproj.io/",
    "kustomize.toolkit.fluxcd.io/",
    "helm.toolkit.fluxcd.io/",
    "fluxcd.io/",
    f"{_OBJECTSET}/",
)
# managedFields managers that re-apply what they manage (exact names, or prefixes ending in "@"), by tool.
RECONCILERS = {
    "helm": "Helm",
    "argocd-controller": "Argo CD",
    "argocd-application-controller": "Argo CD",
    "kustomize-controller": "Flux",
    "helm-controller": "Flux",
    "deploy@": "k3s",  # the k3s deploy controller (server/manifests), as deploy@<node>
    "fleet-agent": "Rancher Fleet",
}


@dataclass(frozen=True)
class Manager:
    """Someone who owns or reconciles an object: who, what undoes convert's change, what to do first."""

    who: str
    by: str  # "the next helm upgrade": what re-creates or resets the object
    fix: str  # what the operator should do before convert


def managers_of(obj: Obj) -> list[Manager]:
    """Return everyone who owns or reconciles ``obj``, as its metadata tells (none: only people change it)."""
    meta = meta_of(obj)
    labels = labels_of(obj)
    annotations = dict(meta.get("annotations") or {})
    found: list[Manager] = []
    ns = str(meta.get("namespace") or "")
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            found.append(_owner(ref, ns))
    release = annotations.get(HELM_RELEASE) or (
        labels.get(INSTANCE) if labels.get("app.kubernetes.io/managed-by") == "Helm" else None
    )
    helm = release or labels.get("app.kubernetes.io/managed-by") == "Helm" or "helm.sh/chart" in labels
    if helm or labels.get("heritage") in ("Helm", "Tiller"):
        chart = f", chart {labels['helm.sh/chart']}" if "helm.sh/chart" in labels else ""
        where = annotations.get(HELM_NAMESPACE) or ns
        found.append(
            Manager(
                f"Helm release {release or labels.get('release') or '(name unknown)'} (namespace {where}{chart})",
                "the next helm upgrade",
                "take it out of the chart, or uninstall the release",
            )
        )
    app = _argo_app(annotations, labels)
    if app:
        found.append(
            Manager(
                f"Argo CD app {app}",
                "the next Argo CD sync",
                "turn off the app's automated sync and take it out of its source",
            )
        )
    for group, (kind, cli) in _FLUX.items():
        name = labels.get(f"{group}/name")
        if name:
            where = labels.get(f"{group}/namespace") or ns
            found.append(
                Manager(
                    f"{kind} {where}/{name}",
                    "the next Flux reconciliation",
                    f"suspend it (flux suspend {cli} {name} -n {where}) and take it out of its source",
                )
            )
    owner = annotations.get(f"{_OBJECTSET}/owner-name") or labels.get(f"{_OBJECTSET}/owner-name")
    if owner:
        gvk = annotations.get(f"{_OBJECTSET}/owner-gvk", "")
        kind = gvk.rpartition("Kind=")[2] or "object set"
        found.append(
            Manager(
                f"{kind} {annotations.get(f'{_OBJECTSET}/owner-namespace') or ns}/{owner} ({_OBJECTSET})",
                "its next apply (a k3s Addon: whenever k3s starts)",
                "take it out of its manifest (a k3s Addon: its file in /var/lib/rancher/k3s/server/manifests "
                "on the masters)",
            )
        )
    named = " ".join(m.who for m in found)  # a tool already named by its metadata is not named again
    for entry in meta.get("managedFields") or []:
        manager = str(entry.get("manager") or "")
        if entry.get("subresource"):
            continue  # status writers do not reset the spec
        tool = next(
            (t for m, t in RECONCILERS.items() if manager == m or (m.endswith("@") and manager.startswith(m))), None
        )
        if tool is None or tool in named or (tool == "k3s" and _OBJECTSET in named):
            continue
        found.append(
            Manager(
                f"field manager {manager} ({tool})",
                f"{tool}'s next apply",
                f"stop {tool} from managing it",
            )
        )
        named += f" {tool}"
    return list({m.who: m for m in found}.values())


def _owner(ref: Obj, namespace: str) -> Manager:
    kind, name = ref.get("kind", "?"), ref.get("name", "?")
    who = f"{kind} {namespace + '/' if namespace else ''}{name} (its controller)"
    if kind == "ScaledObject":
        return Manager(
            who,
            "KEDA",
            f"delete ScaledObject {name} (kubectl delete scaledobject {name} -n {namespace}) or point its "
            "scaleTargetRef elsewhere",
        )
    return Manager(who, f"the controller of {kind} {name}", f"change or delete {kind} {name}")


def _argo_app(annotations: dict[str, str], labels: dict[str, str]) -> str | None:
    tracking = annotations.get(ARGO_TRACKING_ID, "")
    app = tracking.partition(":")[0] if ":" in tracking else labels.get(ARGO_INSTANCE)
    if not app:
        return None
    ns, sep, name = app.partition("_")  # "<namespace>_<app>" for applications outside argocd's namespace
    return f"{name} (namespace {ns})" if sep else app


def untracked(metadata: dict[str, str], keys: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Return labels or annotations without the tracking keys (exact, or prefixes ending in "/"), and those dropped."""
    kept, dropped = {}, []
    for k, v in metadata.items():
        if any(k.startswith(t) if t.endswith("/") else k == t for t in keys):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


def disruption_notes(app: str, labels: dict[str, str], namespace: str, pdbs: Sequence[Obj]) -> list[str]:
    """Say what each PodDisruptionBudget selecting the app's pods means once they belong to a DaemonSet."""
    notes = []
    for pdb in pdbs:
        if (meta_of(pdb).get("namespace") or namespace) != namespace:
            continue
        spec = spec_of(pdb)
        if not selector_matches(spec.get("selector"), labels):
            continue
        budget = next((f"{k} {spec[k]}" for k in ("minAvailable", "maxUnavailable") if k in spec), "no budget")
        blocked = spec.get("maxUnavailable") in (0, "0", "0%") or spec.get("minAvailable") == "100%"
        notes.append(
            f"{app}: {describe_object(dict(pdb, kind='PodDisruptionBudget'))} ({budget}) selects its pods and will "
            "select the DaemonSet's: the DaemonSet's own rolling update deletes pods without asking it, and "
            "`kubectl drain --ignore-daemonsets` leaves DaemonSet pods alone, so it guards only evictions through "
            "the API (cluster-autoscaler, descheduler)"
            + ("; with this budget those are always refused" if blocked else "")
            + "; convert leaves it as it is"
        )
    return notes
