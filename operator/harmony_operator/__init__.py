"""harmony's Kubernetes operator: scales workloads (Deployments, StatefulSets, any kind with a /scale
subresource) on forecast distributions.

One `HarmonyAutoscaler` custom resource per workload (CRD in helm/harmony-operator/crds/). Every interval the
operator queries the workload's indicators from Prometheus, samples the trained forecaster, asks
`harmony.decision` for the replica count, patches the target's /scale subresource (mode Apply) and explains
the decision in the resource's status and in Kubernetes Events. Run it with `python -m harmony_operator`.
"""

__version__ = "0.1.0"

GROUP = "harmony.dev"
VERSION = "v1alpha1"
PLURAL = "harmonyautoscalers"
KIND = "HarmonyAutoscaler"
