"""`shards`: one Deployment and one Lease per shard, with disjoint pods, and RBAC for exactly those Leases."""

from __future__ import annotations

import pytest
from chart_helpers import CHART, NAMESPACE, RELEASE, Helm, HelmFailed, find, only, values_with
from harmony_operator.sharding import lease_name
from test_chart_rbac import lease_rules, roles  # type: ignore[import-not-found]


def test_shards_render_one_deployment_and_one_lease_each(helm: Helm) -> None:
    manifests = helm.template(values_with(shards=3, replicaCount=2))
    deployments = find(manifests, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == [f"harmony-operator-shard-{i}" for i in range(3)]
    selectors = []
    for i, d in enumerate(deployments):
        assert d["spec"]["replicas"] == 2  # replicaCount pods per shard: a standby in each
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector["harmony.dev/shard"] == str(i)
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in selector.items())  # the pods match their own Deployment
        selectors.append(selector)
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [a for a in args if a.startswith(("--shard", "--lease-name="))] == [
            "--lease-name=harmony-operator",
            "--shards=3",
            f"--shard={i}",
        ]
    # No Deployment's selector matches another's pods.
    for i, a in enumerate(selectors):
        for j, d in enumerate(deployments):
            pod = d["spec"]["template"]["metadata"]["labels"]
            assert all(pod.get(k) == v for k, v in a.items()) is (i == j)
    # The Role grants exactly the Leases the operator names (the same function computes them).
    leases = [lease_name("harmony-operator", i, 3) for i in range(3)]
    assert leases == ["harmony-operator-0-of-3", "harmony-operator-1-of-3", "harmony-operator-2-of-3"]
    assert roles(manifests)["Role", NAMESPACE, "harmony-operator-leader-election"] == sorted(
        lease_rules(*leases)
    )


def test_one_shard_keeps_the_unsharded_deployment(helm: Helm) -> None:
    # An upgrade from a release without shards keeps its Deployment (whose selector is immutable).
    deployment = only(helm.template(values_with(shards=1)), "Deployment")
    assert deployment["metadata"]["name"] == "harmony-operator"
    assert "harmony.dev/shard" not in deployment["spec"]["selector"]["matchLabels"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--shard")]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (values_with(shards=2, leaderElection={"enabled": False}), "shards > 1 needs leaderElection.enabled"),
        (values_with(shards=0), "shards"),
    ],
    ids=["no-leader-election", "zero"],
)
def test_bad_shard_settings_fail_the_install(helm: Helm, values: dict[str, object], message: str) -> None:
    with pytest.raises(HelmFailed, match=message):
        helm.template(values)


def test_notes_name_every_shard(helm4: Helm) -> None:
    # NOTES.txt is rendered by install only; helm 4 dry-runs an install without a cluster.
    values = helm4.values_file(values_with(shards=2))
    result = helm4.run(
        "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(values)
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "splits them over 2 shards, one Deployment and one Lease each" in notes
    assert f"(harmony-operator-<i>-of-2 in {NAMESPACE})" in notes
    for i in range(2):
        assert f"rollout status deployment/harmony-operator-shard-{i}" in notes
    assert "get leases -l harmony.dev/lease-group=harmony-operator" in notes
