"""The chart's RBAC is exactly what the operator needs: no verb, resource or namespace more."""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import NAMESPACE, Helm, Manifest, find, only, values_with

RBAC_KINDS = ("ClusterRole", "Role")
BINDING_KINDS = ("ClusterRoleBinding", "RoleBinding")
Rule = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def rule(
    api_groups: list[str], resources: list[str], verbs: list[str], names: list[str] | None = None
) -> Rule:
    # Order inside a rule's lists means nothing to the API server; duplicates would still show up in len().
    return (
        tuple(sorted(api_groups)),
        tuple(sorted(resources)),
        tuple(sorted(names or [])),
        tuple(sorted(verbs)),
    )


WATCH_RULES = [
    rule(["harmony.dev"], ["harmonyautoscalers"], ["get", "list", "watch", "patch"]),
    rule(["harmony.dev"], ["harmonyautoscalers/status"], ["get", "patch"]),
    rule(["apps"], ["deployments/scale", "statefulsets/scale"], ["get", "patch"]),
    # Listed only, to detect another autoscaler on the same target.
    rule(["autoscaling"], ["horizontalpodautoscalers"], ["list"]),
    rule(["keda.sh"], ["scaledobjects"], ["list"]),
    rule([""], ["events"], ["create"]),
]


def lease_rules(*leases: str) -> list[Rule]:
    return [
        rule(["coordination.k8s.io"], ["leases"], ["create"]),
        # Listed in the release namespace only: shows a change of the shard count in progress.
        rule(["coordination.k8s.io"], ["leases"], ["list"]),
        rule(["coordination.k8s.io"], ["leases"], ["get", "patch"], names=list(leases)),
    ]


def rules_of(role: Manifest) -> list[Rule]:
    return sorted(
        rule(r["apiGroups"], r["resources"], r["verbs"], r.get("resourceNames")) for r in role["rules"]
    )


def roles(manifests: list[Manifest]) -> dict[tuple[str, str | None, str], list[Rule]]:
    """(kind, namespace, name) -> sorted rules of every Role and ClusterRole."""
    return {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): rules_of(m)
        for m in manifests
        if m["kind"] in RBAC_KINDS
    }


def bindings(manifests: list[Manifest]) -> dict[tuple[str, str | None, str], tuple[Any, ...]]:
    """(kind, namespace, name) -> (roleRef kind, roleRef name, subjects) of every binding."""
    return {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): (
            m["roleRef"]["apiGroup"],
            m["roleRef"]["kind"],
            m["roleRef"]["name"],
            m["subjects"],
        )
        for m in manifests
        if m["kind"] in BINDING_KINDS
    }


SUBJECTS = [{"kind": "ServiceAccount", "name": "harmony-operator", "namespace": NAMESPACE}]
RBAC_GROUP = "rbac.authorization.k8s.io"


@pytest.mark.parametrize("namespaces", [[], ["team-a", "team-b"]], ids=["all-namespaces", "two-namespaces"])
@pytest.mark.parametrize("leader_election", [True, False], ids=["leader-election", "no-leader-election"])
def test_rbac_is_exactly_the_operator_permissions(
    helm: Helm, namespaces: list[str], leader_election: bool
) -> None:
    manifests = helm.template(
        values_with(watch={"namespaces": namespaces}, leaderElection={"enabled": leader_election})
    )
    expected_roles: dict[tuple[str, str | None, str], list[Rule]] = {}
    expected_bindings: dict[tuple[str, str | None, str], tuple[Any, ...]] = {}
    if namespaces:
        for ns in namespaces:
            expected_roles["Role", ns, "harmony-operator"] = sorted(WATCH_RULES)
            expected_bindings["RoleBinding", ns, "harmony-operator"] = (
                RBAC_GROUP,
                "Role",
                "harmony-operator",
                SUBJECTS,
            )
    else:
        expected_roles["ClusterRole", None, "harmony-operator"] = sorted(WATCH_RULES)
        expected_bindings["ClusterRoleBinding", None, "harmony-operator"] = (
            RBAC_GROUP,
            "ClusterRole",
            "harmony-operator",
            SUBJECTS,
        )
    if leader_election:
        expected_roles["Role", NAMESPACE, "harmony-operator-leader-election"] = sorted(
            lease_rules("harmony-operator")
        )
        expected_bindings["RoleBinding", NAMESPACE, "harmony-operator-leader-election"] = (
            RBAC_GROUP,
            "Role",
            "harmony-operator-leader-election",
            SUBJECTS,
        )
    assert roles(manifests) == expected_roles
    assert bindings(manifests) == expected_bindings

    # The operator is told the same scope and lease that the RBAC grants.
    args = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    scope = [a for a in args if a.startswith(("--namespace", "--all-namespaces"))]
    assert scope == ([f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"])
    election = [
        a for a in args if a.startswith(("--lease-name", "--lease-namespace", "--no-leader-election"))
    ]
    if leader_election:
        assert election == ["--lease-name=harmony-operator", f"--lease-namespace={NAMESPACE}"]
    else:
        assert election == ["--no-leader-election"]


def test_bindings_name_the_chart_service_account(helm: Helm) -> None:
    manifests = helm.template(values_with())
    account = only(manifests, "ServiceAccount")
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    for binding in find(manifests, "ClusterRoleBinding") + find(manifests, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
        ]


def test_lease_name_and_release_name_follow_through(helm: Helm) -> None:
    # Another release name prefixes every object; an explicit lease name reaches both the Role and the args.
    manifests = helm.template(
        values_with(leaderElection={"enabled": True, "leaseName": "harmony-leader"}), release="prod"
    )
    assert roles(manifests) == {
        ("ClusterRole", None, "prod-harmony-operator"): sorted(WATCH_RULES),
        ("Role", NAMESPACE, "prod-harmony-operator-leader-election"): sorted(lease_rules("harmony-leader")),
    }
    args = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--lease-name=harmony-leader" in args
    default_lease = helm.template(values_with(), release="prod")
    assert roles(default_lease)["Role", NAMESPACE, "prod-harmony-operator-leader-election"] == sorted(
        lease_rules("prod-harmony-operator")
    )


def test_existing_service_account(helm: Helm) -> None:
    manifests = helm.template(values_with(serviceAccount={"create": False, "name": "platform-operator"}))
    assert find(manifests, "ServiceAccount") == []
    for binding in find(manifests, "ClusterRoleBinding") + find(manifests, "RoleBinding"):
        assert binding["subjects"][0]["name"] == "platform-operator"


def test_extra_scale_targets_grant_only_their_scale_subresource(helm: Helm) -> None:
    manifests = helm.template(
        values_with(
            rbac={
                "extraScaleTargets": [
                    {"apiGroup": "argoproj.io", "resources": ["rollouts"]},
                    {"apiGroup": "leaderworkerset.x-k8s.io", "resources": ["leaderworkersets"]},
                ]
            }
        )
    )
    assert roles(manifests)["ClusterRole", None, "harmony-operator"] == sorted(
        [
            *WATCH_RULES,
            rule(["argoproj.io"], ["rollouts/scale"], ["get", "patch"]),
            rule(["leaderworkerset.x-k8s.io"], ["leaderworkersets/scale"], ["get", "patch"]),
        ]
    )
