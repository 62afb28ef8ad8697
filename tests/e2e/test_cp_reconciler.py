"""The reconciler: one owner of state, so reload, DNS, health and drain never race.

Each test here names a race the control plane once had (several writers of its
state) and shows the event loop closing it. The control plane runs in this
process with a resolver the test controls; probes are off unless a test is
about them, so every health change is an event the test posts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from control_plane.config.parse import parse_config
from control_plane.ir.fleet import FleetState, target_key
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import EndpointHealth
from control_plane.names import cluster_name
from control_plane.reconcile.events import Verdict
from control_plane.reconcile.reconciler import Reconciler
from control_plane.reconcile.tasks import SupervisedTasks
from control_plane.runtime import ControlPlane
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.cache.snapshot_cache import SnapshotCache
from control_plane.xds.resource import CLUSTER, ENDPOINT, ROUTE
from control_plane.xds.translator import load_lua_template
from testkit.gateway import gateway_config

OFF = {"enabled": False}
A, B = "model-a", "model-b"


class Answers:
    """A resolver whose answers, failures and delay the test sets."""

    def __init__(self, answers: dict[str, tuple[str, ...]]) -> None:
        self.answers = answers
        self.fail: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def __call__(self, host: str, _port: int) -> tuple[str, ...]:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        if host in self.fail:
            raise OSError(f"lookup of {host} failed")
        return self.answers[host]


def record(cache: SnapshotCache) -> list[Snapshot]:
    """Every snapshot the cache publishes from now on."""
    published: list[Snapshot] = []
    original = cache.set

    def spy(snap: Snapshot) -> bool:
        ok = original(snap)
        if ok:
            published.append(snap)
        return ok

    cache.set = spy  # type: ignore[method-assign]
    return published


def eds_addresses(snap: Snapshot, model: str) -> list[str]:
    cla = snap.items(ENDPOINT).get(cluster_name(model))
    if cla is None:
        return []
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    return [
        e.endpoint.address.socket_address.address for loc in cla.endpoints for e in loc.lb_endpoints
    ]


def fleet_doc(**overrides: Any) -> dict[str, Any]:
    return gateway_config(
        [
            {"url": "http://fleet.test:9000", "models": [A], "health": OFF},
            {"url": "http://127.0.0.1:9001", "models": [B], "health": OFF},
        ],
        **overrides,
    )


@pytest.fixture
async def running() -> AsyncIterator[tuple[ControlPlane, Answers, dict[str, Any]]]:
    answers = Answers({"fleet.test": ("127.0.0.5", "127.0.0.6")})
    doc = fleet_doc()
    cp = ControlPlane(parse_config(doc), resolver=answers)
    await cp.start()
    yield cp, answers, doc
    await cp.stop()


async def test_drain_during_a_slow_reload_lookup_keeps_addresses(
    running: tuple[ControlPlane, Answers, dict[str, Any]],
) -> None:
    """A drain landing while a reload waits on DNS used to publish EDS with no
    addresses for every backend given by host name (reload cleared them first)."""
    cp, answers, doc = running
    published = record(cp.cache)
    answers.gate = asyncio.Event()
    reload = asyncio.create_task(cp.reload(parse_config({**doc, "routing": {"retries": 1}})))
    await asyncio.wait_for(answers.waiting.wait(), 5)
    assert await cp.drain("127.0.0.1:9001")
    answers.gate.set()
    await asyncio.wait_for(reload, 5)
    assert published, "the drain and the reload were published"
    for snap in published:
        assert sorted(eds_addresses(snap, A)) == ["127.0.0.5", "127.0.0.6"]


async def test_failed_lookup_on_reload_keeps_the_last_good_addresses(
    running: tuple[ControlPlane, Answers, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    cp, answers, doc = running
    answers.fail.add("fleet.test")
    with caplog.at_level(logging.WARNING):
        await cp.reload(parse_config({**doc, "routing": {"retries": 1}}))
    snap = cp.cache.snapshot
    assert snap is not None
    assert sorted(eds_addresses(snap, A)) == ["127.0.0.5", "127.0.0.6"]
    assert "keeping" in caplog.text and "fleet.test" in caplog.text
    assert cp.status()["dns_errors"] == {
        "http://fleet.test:9000": "OSError: lookup of fleet.test failed"
    }
    # A later good answer replaces them and clears the error.
    answers.fail.clear()
    answers.answers["fleet.test"] = ("127.0.0.7",)
    assert await cp.refresh_addresses()
    assert eds_addresses(cp.cache.snapshot, A) == ["127.0.0.7"]  # type: ignore[arg-type]
    assert cp.status()["dns_errors"] == {}


async def test_failed_refresh_keeps_addresses(
    running: tuple[ControlPlane, Answers, dict[str, Any]],
) -> None:
    cp, answers, _ = running
    answers.fail.add("fleet.test")
    assert not await cp.refresh_addresses()
    assert sorted(eds_addresses(cp.cache.snapshot, A)) == ["127.0.0.5", "127.0.0.6"]  # type: ignore[arg-type]


async def test_concurrent_reloads_are_applied_in_order(
    running: tuple[ControlPlane, Answers, dict[str, Any]],
) -> None:
    """SIGHUP and POST /config/reload at once: both land, the later one wins, nothing lost."""
    cp, _, doc = running
    one = parse_config({**doc, "routing": {"retries": 1}})
    two = parse_config({**doc, "routing": {"retries": 4, "retry_on_reset": False}})
    await asyncio.gather(cp.reload(one), cp.reload(two))
    assert cp.state.spec.retries == 4
    await cp.reload(one)
    assert cp.state.spec.retries == 1


async def test_removal_waits_for_route_ack_through_health_events() -> None:
    """A health event while a removal waits for the route ACK used to publish the
    final snapshot at once, dropping the cluster before the routes stopped naming it."""
    doc = fleet_doc()
    doc["backends"][0]["url"] = "http://127.0.0.5:9000"
    doc["backends"][0]["health"] = {"interval_s": 5}
    cache = SnapshotCache()
    spec = spec_from_config(parse_config(doc))
    rec = Reconciler(
        FleetState(spec, {b.url: (b.host,) for b in spec.backends}),
        cache,
        load_lua_template(),
        debounce_s=0.0,
        removal_timeout_s=30,
    )
    envoy_acked: set[str] = set()
    rec.acked = lambda type_url, version: type_url == ROUTE and version in envoy_acked
    await rec.start(rec.state.resolved, {})
    task = asyncio.create_task(rec.run())
    try:
        gone = cluster_name(B)
        spec_without_b = spec_from_config(parse_config({**doc, "backends": doc["backends"][:1]}))
        await rec.change_spec(spec_without_b, {})
        first = cache.snapshot
        assert first is not None
        assert gone in first.items(CLUSTER), "step one keeps the cluster"
        assert all(gone not in str(r) for r in first.items(ROUTE).values())
        # Health flips while Envoy has not ACKed the routes: the cluster stays.
        for h in (EndpointHealth.UNHEALTHY, EndpointHealth.HEALTHY, EndpointHealth.UNHEALTHY):
            rec.post(Verdict(target_key("127.0.0.5:9000", A), h))
            await rec.barrier()
            snap = cache.snapshot
            assert snap is not None and gone in snap.items(CLUSTER)
            assert rec.removal_pending
        # Envoy ACKs the routes: step two removes the cluster.
        envoy_acked.add(first.version(ROUTE))
        rec.on_ack()
        await rec.barrier()
        assert gone not in cache.snapshot.items(CLUSTER)  # type: ignore[union-attr]
        assert not rec.removal_pending
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_removal_goes_on_after_the_ack_timeout() -> None:
    doc = fleet_doc()
    doc["backends"][0]["url"] = "http://127.0.0.5:9000"
    cache = SnapshotCache()
    spec = spec_from_config(parse_config(doc))
    rec = Reconciler(
        FleetState(spec, {b.url: (b.host,) for b in spec.backends}),
        cache,
        load_lua_template(),
        removal_timeout_s=0.3,
    )
    rec.acked = lambda _t, _v: False  # an Envoy that never ACKs
    await rec.start(rec.state.resolved, {})
    task = asyncio.create_task(rec.run())
    try:
        await rec.change_spec(
            spec_from_config(parse_config({**doc, "backends": doc["backends"][:1]})), {}
        )
        assert cluster_name(B) in cache.snapshot.items(CLUSTER)  # type: ignore[union-attr]
        await asyncio.sleep(0.6)
        assert cluster_name(B) not in cache.snapshot.items(CLUSTER)  # type: ignore[union-attr]
        assert rec.stats.removals_timed_out == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_burst_of_events_is_one_push() -> None:
    doc = gateway_config(
        [{"url": f"http://127.0.0.1:{9100 + i}", "models": [A]} for i in range(50)]
    )
    cache = SnapshotCache()
    spec = spec_from_config(parse_config(doc))
    rec = Reconciler(
        FleetState(spec, {b.url: (b.host,) for b in spec.backends}), cache, load_lua_template()
    )
    await rec.start(rec.state.resolved, {})
    task = asyncio.create_task(rec.run())
    try:
        pushes = rec.stats.pushes
        for i in range(50):
            rec.post(Verdict(target_key(f"127.0.0.1:{9100 + i}", A), EndpointHealth.HEALTHY))
        await rec.barrier()
        assert rec.stats.pushes == pushes + 1
        assert rec.stats.last_batch_size == 51  # 50 verdicts and the barrier
        assert list(rec.state.health.values()) == [EndpointHealth.HEALTHY] * 50
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_two_names_one_address_different_models_start_and_refresh() -> None:
    """Two host names resolving to one address with different models used to crash the
    start (duplicate probe target key) and stop DNS refresh for good."""
    answers = Answers({"a.test": ("127.0.0.9",), "b.test": ("127.0.0.9",)})
    doc = gateway_config(
        [
            {"url": "http://a.test:9000", "models": [A], "max_concurrency": 2},
            {"url": "http://b.test:9000", "models": [B], "health": {"interval_s": 7}},
        ]
    )
    cp = ControlPlane(parse_config(doc), resolver=answers)
    try:
        await cp.start()
        keys = {t.key for t in cp.probe_targets()}
        assert keys == {target_key("127.0.0.9:9000", A), target_key("127.0.0.9:9000", B)}
        (view,) = cp.endpoints()
        assert view.models == (A, B)
        await cp.refresh_addresses()
        assert all(t["state"] == "running" for t in cp.status()["tasks"])
    finally:
        await cp.stop()


async def test_health_is_per_endpoint_and_model() -> None:
    """One broken model leaves the backend serving its other model."""
    doc = gateway_config([{"url": "http://127.0.0.1:9000", "models": [A, B], "max_concurrency": 4}])
    cache = SnapshotCache()
    spec = spec_from_config(parse_config(doc))
    rec = Reconciler(
        FleetState(spec, {"http://127.0.0.1:9000": ("127.0.0.1",)}), cache, load_lua_template()
    )
    await rec.start(rec.state.resolved, {})
    task = asyncio.create_task(rec.run())
    try:
        rec.post(Verdict(target_key("127.0.0.1:9000", A), EndpointHealth.HEALTHY))
        rec.post(Verdict(target_key("127.0.0.1:9000", B), EndpointHealth.UNHEALTHY))
        await rec.barrier()
        snap = cache.snapshot
        assert snap is not None
        status = {}
        for m in (A, B):
            cla = snap.items(ENDPOINT)[cluster_name(m)]
            assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
            (ep,) = cla.endpoints[0].lb_endpoints
            status[m] = ep.health_status
        assert status == {A: 1, B: 2}  # HEALTHY, UNHEALTHY
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_drained_endpoint_that_leaves_is_forgotten(
    running: tuple[ControlPlane, Answers, dict[str, Any]],
) -> None:
    cp, answers, _ = running
    assert await cp.drain("127.0.0.6:9000")
    answers.answers["fleet.test"] = ("127.0.0.5",)
    await cp.refresh_addresses()
    assert cp.state.draining == frozenset()
    answers.answers["fleet.test"] = ("127.0.0.5", "127.0.0.6")
    await cp.refresh_addresses()
    views = {v.key: v for v in cp.endpoints()}
    assert not views["127.0.0.6:9000"].draining, "a returning address is not drained"
    assert not await cp.undrain("127.0.0.6:9000")


async def test_unknown_drain_is_refused(
    running: tuple[ControlPlane, Answers, dict[str, Any]],
) -> None:
    cp, _, _ = running
    assert not await cp.drain("10.9.9.9:1")
    assert not await cp.undrain("127.0.0.1:9001")


# ---------------------------------------------------------------- supervised tasks


@pytest.fixture
def quick_tasks() -> Iterator[SupervisedTasks]:
    yield SupervisedTasks(backoff_start_s=0.01, backoff_max_s=0.05)


async def test_a_failing_task_is_logged_and_restarted(
    quick_tasks: SupervisedTasks, caplog: pytest.LogCaptureFixture
) -> None:
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR):
        quick_tasks.spawn("flaky", flaky)
        for _ in range(100):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.01)
    (info,) = quick_tasks.snapshot()
    assert info["restarts"] == 2 and info["state"] == "running"
    assert info["last_error"] == "RuntimeError: boom 2"
    assert caplog.text.count("task flaky failed") == 2
    await quick_tasks.stop()
    assert quick_tasks.snapshot()[0]["state"] == "stopped"


async def test_a_crashing_dns_loop_is_restarted_and_shown(
    running: tuple[ControlPlane, Answers, dict[str, Any]],
) -> None:
    """The DNS loop used to die silently on an unexpected error."""
    cp, _, _ = running
    calls = []

    async def broken(host: str, port: int) -> tuple[str, ...]:
        calls.append(host)
        raise ValueError("resolver bug")

    cp.resolver = broken
    cp.tasks._backoff = (0.01, 0.02)
    await cp.tasks.stop()
    cp.tasks.info.clear()
    state = cp.reconciler.state  # the loop is stopped: the test may set its start state
    cp.reconciler.state = replace(state, spec=replace(state.spec, dns_refresh_s=0.01))
    cp.tasks.spawn("reconciler", cp.reconciler.run)
    cp.tasks.spawn("dns", cp._resolve_loop)
    for _ in range(200):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    tasks = {t["name"]: t for t in cp.status()["tasks"]}
    assert tasks["dns"]["restarts"] >= 2
    assert "resolver bug" in tasks["dns"]["last_error"]
    assert tasks["reconciler"]["state"] == "running"
