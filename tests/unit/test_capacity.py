"""GPU capacity for a revision's replica shape, table-driven: which nodes are eligible, what is
free on them, how many k-unit replicas fit, what the revision's Pending pods take, which pods
make it CapacityLimited, and how the result caps the decider. The same function fed from a real
scheduler's cluster is in tests/k8s/test_capacity_on_cluster.py."""

import pytest

from policies import capacity, decider, scaling
from policies.capacity import ContainerRequest, Node, Pod, ReplicaShape, Taint, Toleration

GPU = "nvidia.com/gpu"
MIG = "nvidia.com/mig-1g.10gb"
KWOK_TAINT = Taint("kwok.x-k8s.io/node", "fake", "NoSchedule")
TOLERATE_KWOK = Toleration("kwok.x-k8s.io/node", capacity.TolerationOperator.EXISTS)
NS = "models"
REVISION = "fraud-v2"


def node(name: str, gpus: int = 4, *, ready: bool = True, cordoned: bool = False,
         labels: dict[str, str] | None = None, taints: tuple[Taint, ...] = (),
         resource: str = GPU) -> Node:
    return Node(name, ready=ready, unschedulable=cordoned, labels=labels or {}, taints=taints,
                allocatable={resource: gpus, "cpu": 32})


def pod(name: str, on: str | None, gpus: int = 2, *, phase: str | None = None,
        deleting: bool = False, unschedulable: str | None = None, namespace: str = NS,
        resource: str = GPU) -> Pod:
    return Pod(namespace, name, phase or ("Running" if on else "Pending"), node_name=on,
               requests={resource: gpus}, deleting=deleting, unschedulable_message=unschedulable)


def own(*names: str) -> list[tuple[str, str]]:
    return [(NS, name) for name in names]


TWO_GPUS = ReplicaShape(units=2)
INSUFFICIENT = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."


@pytest.mark.parametrize(
    ("nodes", "pods", "shape", "revision", "free", "slots", "pending", "eligible"),
    [
        pytest.param([node("a"), node("b")], [], TWO_GPUS, [], 8, 4, 0, ("a", "b"),
                     id="empty-nodes-hold-two-each"),
        pytest.param([node("a", 3), node("b", 3)], [], TWO_GPUS, [], 4, 2, 0, ("a", "b"),
                     id="fragments-smaller-than-a-replica-are-not-usable"),
        pytest.param([node("a", 3), node("b", 3)], [], ReplicaShape(units=1), [], 6, 6, 0,
                     ("a", "b"), id="one-unit-replicas-use-every-unit"),
        pytest.param([node("a"), node("b")], [pod("x", "a", 3)], TWO_GPUS, [], 4, 2, 0,
                     ("a", "b"), id="other-workloads-requests-are-subtracted-per-node"),
        pytest.param([node("a")], [pod("x", "a", 4, phase="Succeeded")], TWO_GPUS, [], 4, 2, 0,
                     ("a",), id="succeeded-pods-free-their-gpus"),
        pytest.param([node("a")], [pod("x", "a", 4, phase="Failed")], TWO_GPUS, [], 4, 2, 0,
                     ("a",), id="failed-pods-free-their-gpus"),
        pytest.param([node("a")], [pod("x", "a", 4, deleting=True)], TWO_GPUS, [], 0, 0, 0,
                     ("a",), id="terminating-pods-hold-their-gpus-until-gone"),
        pytest.param([node("a")], [pod("x", "a", 4, phase="Pending")], TWO_GPUS, [], 0, 0, 0,
                     ("a",), id="bound-pending-pods-hold-their-gpus"),
        pytest.param([node("a", 6)], [pod("x", "a", 8)], TWO_GPUS, [], 0, 0, 0, ("a",),
                     id="overcommitted-node-counts-as-full-not-negative"),
        pytest.param([node("a"), node("b")], [pod("p1", None), pod("p2", None)], TWO_GPUS,
                     own("p1", "p2"), 4, 4, 2, ("a", "b"),
                     id="own-pending-pods-take-slots-first"),
        pytest.param([node("a")], [pod("p1", None), pod("p2", None), pod("p3", None)], TWO_GPUS,
                     own("p1", "p2", "p3"), 0, 2, 3, ("a",),
                     id="more-pending-than-slots-is-zero-not-negative"),
        pytest.param([node("a"), node("b")], [pod("other", None)], TWO_GPUS, own("p1"), 8, 4, 0,
                     ("a", "b"), id="other-revisions-pending-pods-are-not-subtracted"),
        pytest.param([node("a")], [pod("p1", None, namespace="elsewhere")], TWO_GPUS, own("p1"),
                     4, 2, 0, ("a",), id="same-name-in-another-namespace-is-not-ours"),
        pytest.param([node("a")], [pod("p1", None, deleting=True)], TWO_GPUS, own("p1"), 4, 2, 0,
                     ("a",), id="deleted-pending-pods-will-never-take-a-slot"),
        pytest.param([node("a")], [pod("p1", None, unschedulable=INSUFFICIENT)], TWO_GPUS,
                     own("p1"), 4, 2, 0, ("a",),
                     id="unschedulable-pods-are-not-subtracted"),
        pytest.param([node("a"), node("b", ready=False)], [], TWO_GPUS, [], 4, 2, 0, ("a",),
                     id="not-ready-node-is-not-eligible"),
        pytest.param([node("a"), node("b", cordoned=True)], [], TWO_GPUS, [], 4, 2, 0, ("a",),
                     id="cordoned-node-is-not-eligible"),
        pytest.param([node("a"), node("b", taints=(KWOK_TAINT,))], [], TWO_GPUS, [], 4, 2, 0,
                     ("a",), id="untolerated-taint-excludes-node"),
        pytest.param([node("a", taints=(KWOK_TAINT,))], [],
                     ReplicaShape(units=2, tolerations=(TOLERATE_KWOK,)), [], 4, 2, 0, ("a",),
                     id="tolerated-taint-keeps-node"),
        pytest.param([node("a", taints=(Taint("gpu", "a100", "PreferNoSchedule"),))], [],
                     TWO_GPUS, [], 4, 2, 0, ("a",), id="prefer-no-schedule-does-not-block"),
        pytest.param([node("a", taints=(Taint("gpu", "a100", "NoExecute"),))], [],
                     ReplicaShape(units=2, tolerations=(Toleration("gpu", value="a100",
                                                                   effect="NoSchedule"),)),
                     [], 0, 0, 0, (), id="toleration-for-another-effect-does-not-match"),
        pytest.param([node("a", labels={"gpu": "a100"}), node("b", labels={"gpu": "t4"})], [],
                     ReplicaShape(units=2, node_selector={"gpu": "a100"}), [], 4, 2, 0, ("a",),
                     id="node-selector-must-match"),
        pytest.param([node("a", labels={"gpu": "a100"})], [],
                     ReplicaShape(units=2, node_selector={"gpu": "a100", "zone": "x"}), [],
                     0, 0, 0, (), id="every-selector-label-must-match"),
        pytest.param([node("a", resource=GPU)], [], ReplicaShape(units=1, resource=MIG), [],
                     0, 0, 0, ("a",), id="node-without-the-resource-holds-nothing"),
        pytest.param([node("a", 7, resource=MIG)],
                     [pod("x", "a", 3, resource=MIG), pod("y", "a", 4, resource=GPU)],
                     ReplicaShape(units=2, resource=MIG), [], 4, 2, 0, ("a",),
                     id="mig-slices-counted-like-gpus-other-resources-ignored"),
    ],
)
def test_capacity(nodes, pods, shape, revision, free, slots, pending, eligible):
    result = capacity.capacity(nodes, pods, shape, revision)
    assert (result.free_gpus, result.slots, result.pending, result.eligible_nodes) == (
        free, slots, pending, eligible,
    )
    # Only the table's Unschedulable-marked pods of the revision make it CapacityLimited.
    marked = {p.key for p in pods if p.unschedulable_message} & set(revision)
    assert result.unschedulable == len(marked)


@pytest.mark.parametrize(
    ("toleration", "taint", "tolerated"),
    [
        pytest.param(Toleration("k", value="v"), Taint("k", "v"), True, id="equal-key-value"),
        pytest.param(Toleration("k", value="v"), Taint("k", "w"), False, id="equal-other-value"),
        pytest.param(Toleration("k", capacity.TolerationOperator.EXISTS), Taint("k", "w"), True,
                     id="exists-any-value"),
        pytest.param(Toleration("", capacity.TolerationOperator.EXISTS), Taint("any", "w"), True,
                     id="empty-key-exists-tolerates-everything"),
        pytest.param(Toleration("k", value="v", effect="NoExecute"),
                     Taint("k", "v", "NoSchedule"), False, id="effect-must-match-when-given"),
        pytest.param(Toleration("j", capacity.TolerationOperator.EXISTS), Taint("k", "v"), False,
                     id="other-key"),
    ],
)
def test_toleration_matches_like_kubernetes(toleration, taint, tolerated):
    assert toleration.tolerates(taint) is tolerated


def test_unschedulable_pods_make_it_capacity_limited_with_the_schedulers_message():
    pods = [
        pod("r1", "a"), pod("r2", "a"), pod("r3", "b"), pod("r4", "b"),
        pod("r6", None, unschedulable=INSUFFICIENT), pod("r5", None, unschedulable=INSUFFICIENT),
        pod("r7", None),  # just created: not judged yet
        pod("foreign", None, unschedulable=INSUFFICIENT),
    ]
    result = capacity.capacity(
        [node("a"), node("b")], pods, TWO_GPUS, own("r1", "r2", "r3", "r4", "r5", "r6", "r7")
    )
    assert (result.free_gpus, result.slots, result.pending, result.unschedulable) == (0, 0, 1, 2)
    assert result.limited == capacity.CapacityLimit(
        reason="Unschedulable",
        message=f"2 pods of this revision cannot be scheduled: {INSUFFICIENT}",
        pods=("r5", "r6"),
    )


@pytest.mark.parametrize(
    ("containers", "init_containers", "overhead", "expected"),
    [
        pytest.param([1, 2], [], 0, 3, id="containers-add-up"),
        pytest.param([1], [ContainerRequest(4)], 0, 4, id="init-peak-above-running"),
        pytest.param([3], [ContainerRequest(2)], 0, 3, id="init-peak-below-running"),
        pytest.param([1], [ContainerRequest(1, restartable=True), ContainerRequest(2)], 0, 3,
                     id="init-after-sidecar-runs-beside-it"),
        pytest.param([2], [ContainerRequest(1, restartable=True)], 0, 3,
                     id="sidecar-adds-to-running"),
        pytest.param([1], [], 1, 2, id="overhead-added"),
        pytest.param([], [], 0, 0, id="nothing-requested"),
    ],
)
def test_effective_request_follows_the_scheduler(containers, init_containers, overhead, expected):
    assert capacity.effective_request(containers, init_containers, overhead) == expected


def test_replica_shape_needs_a_unit():
    with pytest.raises(ValueError, match="units"):
        ReplicaShape(units=0)


@pytest.mark.parametrize(
    ("nodes", "pods", "wanted_by_demand", "desired"),
    [
        pytest.param([node("a"), node("b")], [], 6, 4, id="two-nodes-of-four-hold-four-pairs"),
        pytest.param([node("a"), node("b"), node("c")], [], 6, 6, id="third-node-lifts-the-cap"),
        pytest.param([node("a", 3), node("b", 3)], [], 6, 2, id="fragments-do-not-count"),
    ],
)
def test_free_gpus_caps_the_decider(nodes, pods, wanted_by_demand, desired):
    """The function's output fed to ScalingInputs.free_gpus: the decider stops at what fits."""
    policy = scaling.ScalingPolicy(metric="concurrency", target=1, target_utilization=1,
                                   gpus_per_replica=2, min_replicas=0)
    free = capacity.capacity(nodes, pods, TWO_GPUS, []).free_gpus
    # A revision that has served before (its service time is known) with that many requests
    # in flight at its replicas, measured.
    inputs = decider.ScalingInputs(now=0.0, value=float(wanted_by_demand),
                                   in_flight=wanted_by_demand, arrivals=float(wanted_by_demand),
                                   free_gpus=free)
    decision, _ = decider.decide(inputs, decider.DeciderState(service_s=1.0), policy)
    assert decision.desired == desired
    assert (decider.Condition.CAPACITY_LIMITED in decision.conditions) is (desired < 6)
