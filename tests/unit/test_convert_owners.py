"""Issue 16, kind 3: objects someone else owns or reconciles are refused (or, with --allow-managed, converted
and reported), and release or GitOps tracking metadata never reaches a DaemonSet."""

import copy
from pathlib import Path

import pytest

from keybuzz_fix import config
from keybuzz_fix.cluster.convert import plan_convert
from keybuzz_fix.cluster.objects import parse_objects
from keybuzz_fix.cluster.observed import Observed, observed_from_objects
from keybuzz_fix.cluster.owners import TRACKING_ANNOTATIONS, TRACKING_LABELS, managers_of, untracked

DATA = Path(__file__).parent.parent / "data"
CFG = config.load_config()


def state(name):
    path = DATA / "convert" / name / "state.yaml"
    return parse_objects(path.read_text(), str(path))


def seed():
    return parse_objects((DATA / "cluster" / "keybuzz.yaml").read_text(), "keybuzz.yaml")


def find(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def meta(**m):
    return {"kind": "Deployment", "metadata": {"name": "a", "namespace": "keybuzz", **m}}


# -- who -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj,who",
    [
        (
            meta(ownerReferences=[{"kind": "ScaledObject", "name": "api", "controller": True}]),
            ["ScaledObject keybuzz/api (its controller)"],
        ),
        (meta(ownerReferences=[{"kind": "ConfigMap", "name": "x"}]), []),  # garbage collection only: no reconciler
        (
            meta(annotations={"meta.helm.sh/release-name": "kb", "meta.helm.sh/release-namespace": "apps"}),
            ["Helm release kb (namespace apps)"],
        ),
        (
            meta(labels={"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/instance": "kb"}),
            ["Helm release kb (namespace keybuzz)"],
        ),
        (meta(labels={"heritage": "Tiller", "release": "old"}), ["Helm release old (namespace keybuzz)"]),
        (
            meta(annotations={"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:keybuzz/a"}),
            ["Argo CD app shop"],
        ),
        (
            meta(annotations={"argocd.argoproj.io/tracking-id": "team-a_shop:apps/Deployment:keybuzz/a"}),
            ["Argo CD app shop (namespace team-a)"],
        ),
        (meta(labels={"argocd.argoproj.io/instance": "shop"}), ["Argo CD app shop"]),
        (
            meta(labels={"helm.toolkit.fluxcd.io/name": "kb", "helm.toolkit.fluxcd.io/namespace": "flux-system"}),
            ["Flux HelmRelease flux-system/kb"],
        ),
        (meta(managedFields=[{"manager": "helm", "operation": "Update"}]), ["field manager helm (Helm)"]),
        (
            meta(managedFields=[{"manager": "argocd-controller", "operation": "Apply"}]),
            ["field manager argocd-controller (Argo CD)"],
        ),
        (
            meta(managedFields=[{"manager": "helm-controller", "operation": "Apply"}]),
            ["field manager helm-controller (Flux)"],
        ),
        (
            meta(
                labels={"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "fs"},
                managedFields=[{"manager": "kustomize-controller", "operation": "Apply"}],
            ),
            ["Flux Kustomization fs/apps"],  # named once, by its labels
        ),
        (
            meta(managedFields=[{"manager": "deploy@k8s-master-01", "operation": "Update"}]),
            ["field manager deploy@k8s-master-01 (k3s)"],
        ),
        (
            meta(
                managedFields=[
                    {"manager": "kubectl-client-side-apply", "operation": "Update"},
                    {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status"},
                    {"manager": "helm", "operation": "Update", "subresource": "status"},
                    {"manager": "keybuzz-fix", "operation": "Apply"},
                ]
            ),
            [],  # people, status writers and the tool itself do not reconcile
        ),
    ],
)
def test_managers_of(obj, who):
    assert [m.who for m in managers_of(obj)] == who


def test_untracked_drops_release_and_gitops_keys_only():
    labels = {
        "app": "api",
        "app.kubernetes.io/name": "api",
        "app.kubernetes.io/instance": "kb",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "kb-1.0",
        "kustomize.toolkit.fluxcd.io/name": "apps",
        "argocd.argoproj.io/instance": "shop",
    }
    kept, dropped = untracked(labels, TRACKING_LABELS)
    assert kept == {"app": "api", "app.kubernetes.io/name": "api"}
    assert len(dropped) == 5
    annotations = {
        "team": "platform",
        "meta.helm.sh/release-name": "kb",
        "argocd.argoproj.io/tracking-id": "x",
        "argocd.argoproj.io/sync-wave": "1",
        "helm.sh/resource-policy": "keep",
        "kustomize.toolkit.fluxcd.io/reconcile": "disabled",
    }
    assert untracked(annotations, TRACKING_ANNOTATIONS)[0] == {"team": "platform"}


# -- the plan --------------------------------------------------------------------------------------


def test_keda_hpa_table_case_is_refused_naming_the_scaled_object():
    """Table case 2 (kedacore/keda#1320)."""
    p = plan_convert(CFG, observed_from_objects(state("21-refused-keda-hpa"), CFG))
    assert p.refusals == (
        "keybuzz-api: HorizontalPodAutoscaler keybuzz/keda-hpa-keybuzz-api is managed by ScaledObject "
        "keybuzz/keybuzz-api (its controller): KEDA would re-create it after convert; first delete ScaledObject "
        "keybuzz-api (kubectl delete scaledobject keybuzz-api -n keybuzz) or point its scaleTargetRef elsewhere "
        "(or pass --allow-managed)",
    )


def test_keda_hpa_with_allow_managed_is_deleted_and_reported_and_comes_back_refused():
    objs = state("21-refused-keda-hpa")
    p = plan_convert(CFG, observed_from_objects(objs, CFG), allow_managed=True)
    assert not p.refusals
    assert ("delete", "keda-hpa-keybuzz-api") in [(c.label, c.name) for c in p.hpas]
    (warning,) = [w for w in p.warnings if "--allow-managed" in w]
    assert warning.startswith(
        "keybuzz-api: --allow-managed: delete HorizontalPodAutoscaler keybuzz/keda-hpa-keybuzz-api though "
        "ScaledObject keybuzz/keybuzz-api (its controller) manages it: KEDA will re-create it"
    )
    # After the run: DaemonSets, NodePort Services, no Deployment; KEDA has re-created its HPA.
    after = Observed(
        "keybuzz",
        deployments=[],
        daemonsets=[c.after for c in p.daemonsets],
        statefulsets=[],
        services=[c.after for c in p.services],
        hpas=[find(objs, "HorizontalPodAutoscaler", "keda-hpa-keybuzz-api")],
        nodes=None,
    )
    again = plan_convert(CFG, after)
    assert [(c.label, c.name) for c in again.pending] == [("delete", "keda-hpa-keybuzz-api")]
    assert len(again.refusals) == 1 and "ScaledObject keybuzz/keybuzz-api" in again.refusals[0]


def test_helm_and_argocd_table_case_is_refused_one_line_per_object():
    """Table case 3 (argoproj/argo-cd#15472, Altinity/clickhouse-operator#487)."""
    p = plan_convert(CFG, observed_from_objects(state("23-refused-helm-argocd"), CFG))
    assert [r.split(" is managed by ")[0] for r in p.refusals] == [
        "keybuzz-api: Deployment keybuzz/keybuzz-api",
        "keybuzz-front: Deployment keybuzz/keybuzz-front",
    ]
    for refusal in p.refusals:
        assert "Helm release keybuzz (namespace keybuzz, chart keybuzz-1.4.2) and Argo CD app keybuzz" in refusal
        assert "the next helm upgrade or the next Argo CD sync would re-create it" in refusal


def test_helm_and_argocd_with_allow_managed_never_copy_tracking_metadata():
    objs = state("24-helm-argocd-allow-managed")
    p = plan_convert(CFG, observed_from_objects(objs, CFG), allow_managed=True)
    assert not p.refusals
    assert sum("--allow-managed: delete Deployment" in w for w in p.warnings) == 2
    for c in p.daemonsets:
        ds_meta = c.after["metadata"]
        assert ds_meta["labels"] == {"app": c.name, "app.kubernetes.io/managed-by": "keybuzz-fix"}
        assert "annotations" not in ds_meta
        assert managers_of(c.after) == []
    assert any(
        "not carried over to the DaemonSet (release and GitOps tracking): app.kubernetes.io/instance, helm.sh/chart, "
        "meta.helm.sh/release-name, meta.helm.sh/release-namespace, argocd.argoproj.io/tracking-id" in n
        for n in p.notes
    )


def test_a_managed_service_is_refused_only_while_it_changes():
    objs = seed()
    svc = find(objs, "Service", "keybuzz-api")
    svc["metadata"]["managedFields"] = [{"manager": "argocd-controller", "operation": "Apply"}]
    p = plan_convert(CFG, observed_from_objects(objs, CFG))
    (refusal,) = p.refusals
    assert refusal.startswith(
        "keybuzz-api: Service keybuzz/keybuzz-api is managed by field manager argocd-controller (Argo CD): "
        "Argo CD's next apply would reset it after convert"
    )
    converted = copy.deepcopy(next(c.after for c in plan_convert(CFG, observed_from_objects(seed(), CFG)).services))
    converted["metadata"]["managedFields"] = svc["metadata"]["managedFields"]
    objs = [o for o in objs if o is not svc] + [converted]
    assert not plan_convert(CFG, observed_from_objects(objs, CFG)).refusals  # already NodePort: nothing to change


def test_a_deployment_owned_by_an_operator_is_refused():
    objs = seed()
    find(objs, "Deployment", "keybuzz-front")["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps.example.com/v1", "kind": "WebApp", "name": "front", "uid": "u", "controller": True}
    ]
    (refusal,) = plan_convert(CFG, observed_from_objects(objs, CFG)).refusals
    assert refusal.startswith("keybuzz-front: Deployment keybuzz/keybuzz-front is managed by WebApp keybuzz/front")
    assert "change or delete WebApp front" in refusal


def test_disruption_budgets_are_notes_and_say_when_they_block_every_eviction():
    objs = seed()
    pdbs = [
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "api", "namespace": "keybuzz"},
            "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "keybuzz-api"}}},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "other", "namespace": "keybuzz"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "postgres"}}},
        },
    ]
    p = plan_convert(CFG, observed_from_objects(objs + pdbs, CFG))
    assert not p.refusals
    (note,) = [n for n in p.notes if "PodDisruptionBudget" in n]
    assert note.startswith("keybuzz-api: PodDisruptionBudget keybuzz/api (maxUnavailable 0) selects its pods")
    assert "kubectl drain --ignore-daemonsets" in note and "always refused" in note
