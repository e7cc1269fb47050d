"""GPU capacity (policies/capacity.py) read from a real cluster through the controller's client
and autoscaler/kube/inventory.py, checked against what the real scheduler does.

Covered: two kwok nodes x 4 GPUs and a Deployment of 6 replicas x 2 GPUs: the scheduler runs
4 and marks 2 Unschedulable; the capacity read from Nodes and Pods says no slot is left, the
2 pods make it CapacityLimited with the scheduler's own message, and fed to the decider it caps
the replicas at the 4 that run. A third node (8 GPUs) is added: the scheduler places the two,
and the capacity shows the 2 slots still free there.
"""

from __future__ import annotations

from kubernetes import client as sync_client

from autoscaler.kube import client, inventory
from policies import capacity, decider, scaling
from tests.k8s import waiting
from tests.k8s.test_scheduling import _gpu_deployment, _is_running_and_ready, _is_unschedulable

GPU = "nvidia.com/gpu"
TIMEOUT_S = 60.0


async def read_capacity(kube: client.Client, namespace: str, names: set[str]
                        ) -> capacity.Capacity:
    nodes = (await kube.list(client.NODES)).items
    every_pod = (await kube.list(client.PODS)).items
    own = (await kube.list(client.PODS, namespace=namespace, label_selector="app=model")).items
    template = (await kube.get(client.DEPLOYMENTS, namespace, "model")).spec.template.spec
    return capacity.capacity(
        [inventory.node(node) for node in nodes if node.metadata.name in names],
        [inventory.pod(pod) for pod in every_pod],
        inventory.replica_shape(template, GPU, units=2),
        inventory.revision_keys(own),
    )


def two_gpu_deployment(replicas: int) -> dict:
    deployment = _gpu_deployment("model", replicas)
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {GPU: "2"}
    }
    return deployment


async def test_capacity_from_the_cluster_caps_what_the_scheduler_cannot_place(
    k8s_cluster, kube, make_gpu_node, k8s_namespace
):
    names = {make_gpu_node(f"{k8s_namespace}-gpu-{index}", gpus=4) for index in range(2)}
    with k8s_cluster.api_client() as api:
        core = sync_client.CoreV1Api(api)
        sync_client.AppsV1Api(api).create_namespaced_deployment(
            k8s_namespace, two_gpu_deployment(replicas=6)
        )

        def placed(running: int, unschedulable: int) -> bool:
            pods = core.list_namespaced_pod(k8s_namespace).items
            return (sum(map(_is_running_and_ready, pods)),
                    sum(map(_is_unschedulable, pods))) == (running, unschedulable)

        await waiting.eventually(lambda: placed(4, 2), timeout_s=TIMEOUT_S,
                                 what="4 pods running and 2 unschedulable")
        full = await read_capacity(kube, k8s_namespace, names)
        assert (full.slots, full.free_gpus, full.pending, full.unschedulable) == (0, 0, 0, 2)
        assert full.eligible_nodes == tuple(sorted(names))
        assert full.limited is not None
        assert full.limited.reason == "Unschedulable"
        assert f"Insufficient {GPU}" in full.limited.message

        # Fed to the decider (the unschedulable pods counted out of `starting`): it keeps the
        # 4 that run and reports CapacityLimited, so the 2 stuck pods would be released.
        policy = scaling.ScalingPolicy(metric="concurrency", target=1, target_utilization=1,
                                       gpus_per_replica=2, min_replicas=0)
        inputs = decider.ScalingInputs(now=0.0, value=6.0, in_flight=6, ready=4, starting=0,
                                       free_gpus=full.free_gpus)
        decision, _ = decider.decide(inputs, decider.DeciderState(), policy)
        assert decision.desired == 4
        assert decider.Condition.CAPACITY_LIMITED in decision.conditions

        names.add(make_gpu_node(f"{k8s_namespace}-gpu-2", gpus=8))
        await waiting.eventually(lambda: placed(6, 0), timeout_s=TIMEOUT_S,
                                 what="the two pods placed on the new node")
        grown = await read_capacity(kube, k8s_namespace, names)
        assert (grown.slots, grown.free_gpus, grown.pending, grown.limited) == (2, 4, 0, None)
