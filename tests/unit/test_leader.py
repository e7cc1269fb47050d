"""Leader election and the fence (autoscaler/kube/leader.py) without a cluster: an in-memory
Lease with the apiserver's optimistic concurrency, an injected monotonic clock and a sleep the
test releases step by step, so every case is instant and exact. The same code runs against the
real apiserver, in separate processes, in tests/k8s/test_leader.py."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from kubernetes_asyncio import client as k8s

from autoscaler.kube import client, leader, status
from policies import routing

NAMESPACE, LEASE = "sluice-system", "sluice-controller"
LONG_AGO = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
"""A renewTime from another node's clock, years behind ours: it must not matter."""


class FakeLeases:
    """Leases as the apiserver keeps them: every write bumps the resourceVersion, an update
    from a stale one or a create of an existing name is a Conflict."""

    def __init__(self) -> None:
        self.lease: k8s.V1Lease | None = None
        self.version = 0
        self.calls: list[str] = []
        self.failure: client.KubeError | None = None
        self.before_write: Callable[[], None] | None = None
        """Runs before a write is applied: another process's write can slip in there."""

    def held_by(self, holder: str, *, duration_s: int = 15, transitions: int = 0,
                renewed: datetime.datetime = LONG_AGO) -> None:
        """Another process writes the Lease (its clock, its renewTime)."""
        metadata = self.lease.metadata if self.lease else k8s.V1ObjectMeta(name=LEASE)
        self._store(k8s.V1Lease(metadata=metadata, spec=k8s.V1LeaseSpec(
            holder_identity=holder, lease_duration_seconds=duration_s, acquire_time=renewed,
            renew_time=renewed, lease_transitions=transitions)))

    @property
    def spec(self) -> k8s.V1LeaseSpec:
        assert self.lease is not None
        return self.lease.spec

    async def get_lease(self, namespace: str, name: str) -> k8s.V1Lease:
        self._called("get", namespace, name)
        if self.lease is None:
            raise client.NotFound(404, "NotFound", f"leases {name} not found")
        return copy.deepcopy(self.lease)

    async def create_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease:
        self._called("create", namespace, lease.metadata.name)
        self._before_write()
        if self.lease is not None:
            raise client.Conflict(409, "AlreadyExists", "leases already exists")
        return self._store(lease)

    async def update_lease(self, namespace: str, lease: k8s.V1Lease) -> k8s.V1Lease:
        self._called("update", namespace, lease.metadata.name)
        self._before_write()
        assert self.lease is not None
        if lease.metadata.resource_version != self.lease.metadata.resource_version:
            raise client.Conflict(409, "Conflict", "the object has been modified")
        return self._store(lease)

    def _called(self, verb: str, namespace: str, name: str) -> None:
        assert (namespace, name) == (NAMESPACE, LEASE)
        self.calls.append(verb)
        if self.failure is not None:
            raise self.failure

    def _before_write(self) -> None:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()

    def _store(self, lease: k8s.V1Lease) -> k8s.V1Lease:
        self.version += 1
        stored = copy.deepcopy(lease)
        stored.metadata.resource_version = str(self.version)
        self.lease = stored
        return copy.deepcopy(stored)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeper:
    """The elector's sleep: it waits until the test wakes it, and the clock moves only then."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.asked: list[float] = []
        self._asleep = asyncio.Event()
        self._wake: asyncio.Future[None] | None = None

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self._wake = asyncio.get_running_loop().create_future()
        self._asleep.set()
        await self._wake

    async def settled(self, task: asyncio.Task[None]) -> None:
        """Until the elector sleeps again or its run ended."""
        asleep = asyncio.ensure_future(self._asleep.wait())
        await asyncio.wait([asleep, task], return_when=asyncio.FIRST_COMPLETED)
        asleep.cancel()

    async def wake(self, task: asyncio.Task[None], after: float | None = None) -> None:
        """Let the clock run the time asked (or ``after``), wake the elector, and wait until it
        sleeps again or its run ended."""
        assert self._wake is not None and self._asleep.is_set()
        self.clock.now += self.asked[-1] if after is None else after
        self._asleep.clear()
        self._wake.set_result(None)
        await self.settled(task)


@dataclasses.dataclass
class Candidate:
    elector: leader.Elector
    sleeper: Sleeper
    task: asyncio.Task[None]

    async def wake(self, after: float | None = None) -> None:
        await self.sleeper.wake(self.task, after)

    async def stop(self) -> None:
        await self.elector.stop()


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def candidates(leases: FakeLeases,
                     clock: Clock) -> AsyncIterator[Callable[..., Awaitable[Candidate]]]:
    """``await start("a")``: an elector running against ``leases``, settled in its first
    sleep. Jitter is fixed: the random fraction is 0.5 (a wait of 2 * 1.6 = 3.2 s)."""
    started: list[Candidate] = []

    async def start(identity: str) -> Candidate:
        sleeper = Sleeper(clock)
        elector = leader.Elector(
            leases, leader.LeaderSettings(namespace=NAMESPACE, identity=identity), clock=clock,
            wall=lambda: datetime.datetime.fromtimestamp(clock.now, datetime.UTC),
            random=lambda: 0.5, sleep=sleeper)
        candidate = Candidate(elector, sleeper, elector.start())
        started.append(candidate)
        await sleeper.settled(candidate.task)
        return candidate

    yield start
    for candidate in started:
        candidate.task.cancel()
        await asyncio.gather(candidate.task, return_exceptions=True)


# -- the pure rule -----------------------------------------------------------------------------


def record(holder: str, duration_s: int = 15, renewed: datetime.datetime = LONG_AGO
           ) -> leader.Record:
    return leader.Record(holder, duration_s, renewed, renewed, 0)


@pytest.mark.parametrize(("seen", "since", "now", "expected"), [
    (record("me"), 0.0, 100.0, "ours"),
    (record(""), 99.0, 100.0, "released"),
    (record("other"), 90.0, 100.0, None),  # 10 s of 15
    (record("other"), 85.0, 100.0, "expired"),  # exactly 15 s unchanged
    (record("other", duration_s=1), 99.0, 100.0, "expired"),  # a released-then-renamed lease
    (record("other", duration_s=0), 100.0, 100.0, "expired"),  # no duration: expired at once
    # Its renewTime is from the future by another node's clock: it does not matter either.
    (record("other", renewed=datetime.datetime(2999, 1, 1, tzinfo=datetime.UTC)), 85.0, 100.0,
     "expired"),
])
def test_a_lease_is_claimed_only_when_ours_released_or_unchanged_for_its_duration(
        seen, since, now, expected):
    assert leader.claim(leader.Observation(seen, since), now, "me") == expected


def test_only_a_change_of_the_record_restarts_the_observation():
    first = leader.observe(None, record("other"), 10.0)
    assert leader.observe(first, record("other"), 20.0) is first
    renewed = record("other", renewed=LONG_AGO + datetime.timedelta(seconds=2))
    assert leader.observe(first, renewed, 20.0) == leader.Observation(renewed, 20.0)


@pytest.mark.parametrize(("changes", "field"), [
    ({"renew_deadline_s": 15.0}, "renew_deadline_s"),
    ({"lease_duration_s": 0}, "lease_duration_s"),
    ({"retry_period_s": 9.0}, "renew_deadline_s"),  # 9 * 1.2 > 10
    ({"retry_period_s": 0.0}, "retry_period_s"),
    ({"lease_name": "Sluice_Controller"}, "lease_name"),
    ({"namespace": ""}, "namespace"),
    ({"identity": ""}, "identity"),
])
def test_settings_that_break_the_protocol_are_refused_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        leader.LeaderSettings(**{"namespace": NAMESPACE, **changes})


def test_defaults_are_client_gos():
    settings = leader.LeaderSettings(namespace=NAMESPACE)
    assert (settings.lease_duration_s, settings.renew_deadline_s, settings.retry_period_s,
            settings.jitter) == (15, 10.0, 2.0, 1.2)
    assert settings.identity != leader.LeaderSettings(namespace=NAMESPACE).identity


# -- acquiring ---------------------------------------------------------------------------------


async def test_a_candidate_creates_a_missing_lease_and_leads(candidates, leases, clock):
    a = await candidates("a")
    assert a.elector.elected.is_set() and a.elector.is_leader()
    assert a.elector.term == leader.Term("created", "", 0, None)
    assert (leases.spec.holder_identity, leases.spec.lease_duration_seconds,
            leases.spec.lease_transitions) == ("a", 15, 0)
    assert leases.spec.renew_time == datetime.datetime.fromtimestamp(clock.now, datetime.UTC)
    assert a.sleeper.asked == [2.0], "the first renewal is due a retry period later"


async def test_a_released_lease_is_taken_at_the_first_attempt(candidates, leases):
    leases.held_by("", duration_s=1, transitions=4)
    a = await candidates("a")
    assert a.elector.term == leader.Term("released", "", 5, 0.0)
    assert (leases.spec.holder_identity, leases.spec.lease_transitions) == ("a", 5)


async def test_a_live_lease_is_never_taken_and_an_unchanged_one_after_its_duration(
        candidates, leases, clock):
    leases.held_by("b", transitions=2)
    a = await candidates("a")
    first_seen = clock.now
    # b renews for a while: each change restarts a's 15 s, whatever b's renewTime says (here
    # it goes backwards).
    for day in range(1, 4):
        await a.wake()  # 3.2 s: 2 s * (1 + 1.2 * 0.5)
        assert not a.elector.is_leader() and a.elector.holder == "b"
        leases.held_by("b", transitions=2, renewed=LONG_AGO - datetime.timedelta(days=day))
        first_seen = clock.now + 3.2  # a sees this record at its next attempt
    waits = []
    while not a.elector.elected.is_set():
        assert leases.spec.holder_identity == "b"
        await a.wake()
        waits.append(clock.now - first_seen)
    # Taken at the first attempt at least 15 s after the record last changed, not before.
    assert waits[-2] < 15 <= waits[-1] < 15 + a.elector.settings.max_retry_interval_s
    assert a.elector.term is not None
    assert (a.elector.term.how, a.elector.term.previous_holder,
            a.elector.term.transitions) == ("expired", "b", 3)
    assert a.elector.term.unchanged_for_s == waits[-1]
    assert leases.spec.holder_identity == "a"


async def test_of_two_candidates_racing_for_one_lease_the_later_write_conflicts(
        candidates, leases):
    leases.held_by("", duration_s=1, transitions=1)
    # b's write lands between a's read and a's write: a's resourceVersion is stale.
    leases.before_write = lambda: leases.held_by("b", transitions=2)
    a = await candidates("a")
    assert not a.elector.is_leader() and a.elector.term is None
    assert (leases.spec.holder_identity, leases.spec.lease_transitions) == ("b", 2)
    await a.wake()
    assert not a.elector.is_leader() and a.elector.holder == "b", "b's lease is live"


async def test_a_lease_created_by_another_meanwhile_is_a_lost_race(candidates, leases):
    leases.before_write = lambda: leases.held_by("b")
    a = await candidates("a")
    assert leases.calls == ["get", "create"]
    assert not a.elector.is_leader() and leases.spec.holder_identity == "b"


# -- holding -----------------------------------------------------------------------------------


async def test_the_leader_renews_every_retry_period_keeping_its_term(candidates, leases,
                                                                     clock):
    a = await candidates("a")
    acquired = leases.spec.acquire_time
    for _ in range(10):
        version = leases.version
        await a.wake()
        assert a.elector.is_leader()
        assert leases.version == version + 1
        assert leases.spec.renew_time == datetime.datetime.fromtimestamp(clock.now,
                                                                          datetime.UTC)
        assert (leases.spec.acquire_time, leases.spec.lease_transitions) == (acquired, 0)
    assert a.sleeper.asked == [2.0] * 11
    assert leases.calls == ["get", "create"] + ["update"] * 10, "renewals take the fast path"


async def test_the_leader_stops_leading_when_renewals_fail_past_the_deadline(
        candidates, leases, clock):
    a = await candidates("a")
    elected_at = clock.now
    leases.failure = client.Unavailable("connection refused")
    while not a.task.done():
        assert a.elector.is_leader() and not a.elector.lost.is_set()
        await a.wake()
    # Tried at 2, 4, 6 and 8 s; woke at 10 s, the deadline, and stepped down untried.
    assert clock.now - elected_at == 10.0
    assert leases.calls.count("update") == 4 and len(leases.calls) == 2 + 4
    assert a.elector.lost.is_set() and not a.elector.is_leader()
    with pytest.raises(leader.NotLeader, match="refused to publish a route table: a does not"):
        a.elector.check("publish a route table")


async def test_a_leader_resumed_after_a_long_pause_is_fenced_before_it_renews(
        candidates, leases, clock):
    a = await candidates("a")
    calls = len(leases.calls)
    clock.now += 20.0  # SIGSTOP for 20 s: nothing of the elector ran meanwhile
    assert not a.elector.is_leader()
    with pytest.raises(leader.NotLeader):
        a.elector.check("scale Deployment ns/m to 3")
    assert len(leases.calls) == calls, "fenced before any call to the apiserver"
    await a.wake(after=0.0)  # the loop runs again: it steps down without trying
    assert a.task.done() and a.elector.lost.is_set()
    assert len(leases.calls) == calls


async def test_a_leader_that_finds_another_holder_steps_down_at_once(candidates, leases):
    a = await candidates("a")
    leases.held_by("b", transitions=1)  # as if b had seen a's lease expire
    await a.wake()
    assert leases.calls[-2:] == ["update", "get"], "the fast path conflicted, then it read"
    assert a.task.done() and not a.elector.is_leader() and a.elector.holder == "b"


async def test_a_conflict_from_a_metadata_change_is_renewed_through_a_read(candidates, leases):
    a = await candidates("a")
    assert leases.lease is not None
    leases.lease.metadata.labels = {"team": "ml"}  # someone labels the Lease
    leases.version += 1
    leases.lease.metadata.resource_version = str(leases.version)
    await a.wake()
    assert leases.calls[-3:] == ["update", "get", "update"]
    assert a.elector.is_leader() and leases.spec.holder_identity == "a"
    assert leases.lease.metadata.labels == {"team": "ml"}, "kept, not overwritten"


# -- stopping ----------------------------------------------------------------------------------


async def test_on_stop_the_leader_shuts_its_fence_then_releases_and_the_standby_takes_over(
        candidates, leases):
    a = await candidates("a")
    b = await candidates("b")
    assert not b.elector.is_leader() and b.elector.holder == "a"
    fenced_when_released = []
    leases.before_write = lambda: fenced_when_released.append(not a.elector.is_leader())
    await a.stop()
    assert fenced_when_released == [True]
    assert (leases.spec.holder_identity, leases.spec.lease_duration_seconds,
            leases.spec.lease_transitions) == ("", 1, 0)
    assert a.elector.lost.is_set()
    await b.wake()  # b's next attempt
    assert b.elector.is_leader() and b.elector.term is not None
    assert (b.elector.term.how, b.elector.term.previous_holder) == ("released", "")
    assert (leases.spec.holder_identity, leases.spec.lease_transitions) == ("b", 1)


async def test_a_standby_that_stops_leaves_the_lease_alone(candidates, leases):
    await candidates("a")
    b = await candidates("b")
    writes = leases.version
    await b.stop()
    assert leases.version == writes and leases.spec.holder_identity == "a"


async def test_a_deposed_leader_does_not_release_its_successors_lease(candidates, leases):
    a = await candidates("a")
    leases.held_by("b", transitions=1)
    assert not await a.elector.release()
    assert leases.spec.holder_identity == "b"


# -- the fenced writers ------------------------------------------------------------------------


class Gate:
    def __init__(self) -> None:
        self.open = False

    def check(self, action: str) -> None:
        if not self.open:
            raise leader.NotLeader(f"refused to {action}")


class RecordingApi:
    """Records what reaches the apiserver."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., object]:
        async def call(*args: object, **kwargs: object) -> object:
            self.calls.append((name, args))
            return name
        return call


WRITES = [
    ("patch_scale", ("ns", "m-predictor", 3), "scale Deployment ns/m-predictor to 3"),
    ("patch_status", (client.SCALING_POLICIES, "ns", "p", {"desired": 3}),
     "patch the status of ScalingPolicy ns/p"),
    ("create_event", ("ns", {"reason": "ScaledUp"}), "create an Event in ns"),
    ("patch_event", ("ns", "p.1", {"series": {}}), "patch Event ns/p.1"),
]


@pytest.mark.parametrize(("method", "args", "action"), WRITES)
async def test_the_fenced_api_writes_only_while_leading(method, args, action):
    api, gate = RecordingApi(), Gate()
    fenced = leader.FencedApi(api, gate)  # type: ignore[arg-type]
    with pytest.raises(leader.NotLeader, match=f"refused to {action}"):
        await getattr(fenced, method)(*args)
    assert api.calls == []
    gate.open = True
    assert await getattr(fenced, method)(*args) == method
    assert api.calls == [(method, args)]


async def test_the_fenced_api_reads_while_not_leading_and_never_writes_leases():
    api, gate = RecordingApi(), Gate()
    fenced = leader.FencedApi(api, gate)  # type: ignore[arg-type]
    assert await fenced.get(client.PODS, "ns", "p") == "get"
    assert await fenced.get_scale("ns", "d") == "get_scale"
    assert await fenced.list(client.PODS, namespace="ns") == "list"
    gate.open = True
    with pytest.raises(leader.NotLeader, match="only the elector"):
        await fenced.update_lease(NAMESPACE, k8s.V1Lease())
    assert [name for name, _ in api.calls] == ["get", "get_scale", "list"]


async def test_a_status_writer_behind_the_fence_reports_a_failed_write_and_retries_later():
    api, gate = RecordingApi(), Gate()
    writer = status.StatusWriter(leader.FencedApi(api, gate),  # type: ignore[arg-type]
                                 client.SCALING_POLICIES)
    assert not await writer.write("ns", "p", {"desired": 3})
    assert writer.changed("ns", "p", {"desired": 3}), "not taken as written"
    gate.open = True
    assert await writer.write("ns", "p", {"desired": 3})
    assert [name for name, _ in api.calls] == ["patch_status"]


async def test_the_fenced_publisher_publishes_only_while_leading():
    published: list[routing.RouteTable] = []

    class Publisher:
        async def publish(self, table: routing.RouteTable) -> None:
            published.append(table)

    gate, table = Gate(), routing.RouteTable.model_validate(
        {"services": {"m": {"revisions": [{"name": "v1", "weight": 100, "endpoints": []}]}}})
    fenced = leader.FencedPublisher(Publisher(), gate)
    with pytest.raises(leader.NotLeader, match="publish a route table"):
        await fenced.publish(table)
    gate.open = True
    await fenced.publish(table)
    assert published == [table]
