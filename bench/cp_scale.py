"""Control-plane scale: one change fanned out to many Envoys and many ADS streams.

Three parts, each against the real control plane (its reconciler, cache and ADS
server on real gRPC):

(a) one health verdict -> every Envoy ACKed the new EDS, with 1, 10 and 50 real
    Envoy processes (distinct node ids and admin ports, one control plane in this
    process, the production debounce); Envoy's own `update_success` counters
    confirm each applied every flip;
(b) 1,000 endpoints over 20 models: the pure translation (config -> model ->
    resources) timed alone, then a reload to that fleet pushed to one real Envoy
    until it ACKed every type, then single drains at that size;
(c) 500 simulated ADS streams (a gRPC ADS client here, subscribing like Envoy:
    CDS and LDS, then EDS and RDS by name, every response ACKed) on a control
    plane in its own process: all connect at once, then one drain through its
    admin API; the time for the new EDS to reach each stream, and the control
    plane's CPU seconds and RSS from /proc meanwhile.

No backend is contacted: endpoints are loopback addresses nothing listens on
(a refused probe is an instant verdict). Every process is ended by its pid.

    .venv/bin/python -m bench.cp_scale [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from bench._harness import rss_kb, target, write_result
from control_plane.config.parse import parse_config
from control_plane.ir.fleet import fixed_addresses, target_key
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import EndpointHealth, build_model
from control_plane.ir.security import load_security
from control_plane.names import cluster_name
from control_plane.reconcile.events import Verdict
from control_plane.runtime import ControlPlane
from control_plane.xds.bootstrap import build_bootstrap, envoy_command
from control_plane.xds.cache.consistency import consistency_errors
from control_plane.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.server.stream_state import StreamState, SyncState
from control_plane.xds.translator import load_lua_template, translate
from testkit.gateway import gateway_config
from testkit.procs import PYTHON, Proc, free_port, wait_http

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
NOWHERE_PORT = 9  # discard: nothing listens there on this machine's loopback
PROBED = {"interval_s": 3600, "timeout_s": 2, "healthy_threshold": 1, "unhealthy_threshold": 1}
UNPROBED = {"enabled": False}


@dataclass(frozen=True)
class Scale:
    envoys: tuple[int, ...]
    flips: int
    fleet_endpoints: int
    fleet_models: int
    builds: int
    drains: int
    streams: int
    stream_endpoints: int
    stream_models: int
    changes: int


FULL = Scale((1, 10, 50), 20, 1000, 20, 20, 10, 500, 100, 10, 5)
SMOKE = Scale((1, 2), 3, 50, 5, 3, 2, 20, 20, 4, 1)

# Targets, chosen before the run and why:
# - 50 Envoys within 1 s: probes decide every few seconds; a verdict older than
#   a second in any Envoy is a second of traffic to a dead backend.
# - 500 streams within 2 s: the same bound for a large fleet, with the fan-out
#   serialised on one Python event loop (one core).
# - build of 1,000 endpoints < 100 ms: every batch of verdicts rebuilds the
#   whole snapshot, so this is the floor of each health change at that size.
# - 1,000-endpoint reload ACKed by an Envoy < 2 s: a reload is operator-driven,
#   but a config that takes longer to reach Envoy than a probe round is stale.
ENVOYS_TARGET_MS = 1000.0
STREAMS_TARGET_MS = 2000.0
BUILD_TARGET_MS = 100.0
RELOAD_TARGET_MS = 2000.0


def pct(values: Sequence[float]) -> dict[str, float]:
    """Median, p99 (nearest rank) and max, rounded to 0.01."""
    v = sorted(values)
    p99 = v[min(len(v) - 1, max(0, round(len(v) * 0.99) - 1))]
    return {
        "n": len(v),
        "median": round(statistics.median(v), 2),
        "p99": round(p99, 2),
        "max": round(v[-1], 2),
    }


def fleet(endpoints: int, models: int, health: dict[str, Any], prefix: int = 3) -> list[Any]:
    """`endpoints` backends on loopback addresses 127.<prefix>.x.y, models round robin."""
    return [
        {
            "url": f"http://127.{prefix}.{i // 250}.{i % 250 + 1}:{NOWHERE_PORT}",
            "models": [f"bench/model-{i % models:02d}"],
            "health": health,
        }
        for i in range(endpoints)
    ]


def cp_doc(backends: list[Any]) -> dict[str, Any]:
    """A gateway config on fresh loopback ports (listener shared by every Envoy: Envoy
    binds it with SO_REUSEPORT)."""
    return gateway_config(backends, edge={})


# ---------------------------------------------------------------- Envoy processes


def start_envoy(work: Path, doc: dict[str, Any], index: int) -> tuple[Proc, str]:
    """A real Envoy with its own node id and admin address, pointed at `doc`'s control
    plane. The admin API listens on a loopback address of its own (127.9.0.x): a port
    picked on 127.0.0.1 can be taken meanwhile by one of the other Envoys' outgoing
    connections (it happened, at 40 Envoys)."""
    own = copy.deepcopy(doc)
    node_id = f"cp-scale-envoy-{index:02d}"
    host = f"127.9.{index // 250}.{index % 250 + 1}"
    own["envoy_admin"] = {"address": host, "port": free_port(host)}
    admin = f"{host}:{own['envoy_admin']['port']}"
    cfg = parse_config(own)
    boot = work / f"{node_id}.json"
    boot.write_text(json.dumps(build_bootstrap(cfg, node_id=node_id)))
    argv = [*envoy_command(cfg, boot, drain_time_s=1), "--disable-hot-restart"]
    return Proc(node_id, argv, work / f"{node_id}.log").start(), admin


def envoy_counter(admin: str, name: str) -> int:
    with urllib.request.urlopen(f"http://{admin}/stats?filter=^{name}$", timeout=5) as r:
        for line in r.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
    return 0


def synced(cp: ControlPlane) -> list[StreamState]:
    """Streams that ACKed the current version of every type."""
    snap = cp.cache.snapshot
    assert cp.ads is not None and snap is not None
    return [
        s
        for s in cp.ads.streams.values()
        if all(
            t in s.types and s.types[t].sync_state(snap.version(t)) is SyncState.SYNCED
            for t in TYPES
        )
    ]


async def wait_synced(cp: ControlPlane, n: int, procs: list[Proc], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(synced(cp)) < n:
        dead = [p for p in procs if not p.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited: {dead[0].log_tail(3)}")
        if loop.time() > deadline:
            raise TimeoutError(f"{len(synced(cp))} of {n} Envoys synced after {timeout} s")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- (a) N Envoys


async def flip(cp: ControlPlane, key: str, n: int) -> tuple[float, float, list[float]]:
    """One verdict; (verdict -> last Envoy's EDS ACK, publish -> that ACK, publish ->
    each Envoy's ACK) in ms."""
    assert cp.ads is not None
    hk = cp.reconciler.targets[key][0]
    healthy = cp.state.health.get(hk) is EndpointHealth.HEALTHY
    health = EndpointHealth.UNHEALTHY if healthy else EndpointHealth.HEALTHY
    gen = cp.cache.generation
    t0 = time.time()
    cp.reconciler.post(Verdict(key, health))
    await cp.reconciler.barrier()
    snap = cp.cache.snapshot
    assert snap is not None and cp.cache.generation == gen + 1 and cp.cache.updated_at
    version = snap.version(ENDPOINT)
    if not await cp.ads.wait_acked(ENDPOINT, version, 30):
        raise TimeoutError("EDS not ACKed by every Envoy within 30 s")
    streams = list(cp.ads.streams.values())
    assert len(streams) == n, f"{len(streams)} streams for {n} Envoys"
    acks = [s.types[ENDPOINT].acked_at or 0.0 for s in streams]
    each = [(a - cp.cache.updated_at) * 1000 for a in acks]
    return (max(acks) - t0) * 1000, max(each), each


async def part_envoys(work: Path, scale: Scale) -> dict[str, Any]:
    models = 2
    doc = cp_doc(fleet(10, models, PROBED, prefix=1))
    cp = ControlPlane(parse_config(doc))
    envoys: list[tuple[Proc, str]] = []
    sizes = []
    key = target_key(f"127.1.0.1:{NOWHERE_PORT}", "bench/model-00")
    cluster = cluster_name("bench/model-00")
    stat = f"cluster.{cluster}.update_success"
    try:
        await cp.start()
        for n in scale.envoys:
            t0 = time.perf_counter()
            while len(envoys) < n:
                envoys.append(start_envoy(work, doc, len(envoys)))
            await wait_synced(cp, n, [p for p, _ in envoys], timeout=30 + 2 * n)
            start_s = time.perf_counter() - t0
            await asyncio.sleep(0.5)
            before = await asyncio.to_thread(lambda: [envoy_counter(a, stat) for _, a in envoys])
            total, fanout, each = [], [], []
            cpu0 = time.process_time()
            for _ in range(scale.flips):
                a, b, c = await flip(cp, key, n)
                total.append(a)
                fanout.append(b)
                each += c
                await asyncio.sleep(0.1)
            cpu_ms = (time.process_time() - cpu0) * 1000 / scale.flips
            after = await asyncio.to_thread(lambda: [envoy_counter(a, stat) for _, a in envoys])
            confirmed = sum(1 for x, y in zip(before, after, strict=True) if y - x >= scale.flips)
            row = {
                "envoys": n,
                "start_and_sync_s": round(start_s, 2),
                "verdict_to_last_eds_ack_ms": pct(total),
                "publish_to_last_eds_ack_ms": pct(fanout),
                "publish_to_each_envoys_eds_ack_ms": pct(each),
                "envoys_whose_update_success_counted_every_flip": confirmed,
                # This process is the control plane (and the bench's waiting): its CPU
                # per flip, against the wall time above, says who the fan-out waits on.
                "cp_process_cpu_ms_per_flip": round(cpu_ms, 1),
            }
            print(f"(a) {n} Envoys: {json.dumps(row)}", flush=True)
            sizes.append(row)
    finally:
        await cp.stop()
        for p, _ in envoys:
            p.stop()
    return {
        "endpoints": 10,
        "models": models,
        "debounce_ms": cp.reconciler._debounce_s * 1000,
        "flips_per_size": scale.flips,
        "sizes": sizes,
    }


# ---------------------------------------------------------------- (b) 1,000 endpoints


def time_build(doc: dict[str, Any], rounds: int) -> dict[str, Any]:
    """config -> spec -> model -> resources, timed alone; and state -> resources (the
    reconciler's _snapshot_of: what every batch of verdicts rebuilds, whole)."""
    lua = load_lua_template()
    t0 = time.perf_counter()
    cfg = parse_config(doc)
    parse_ms = (time.perf_counter() - t0) * 1000
    security = load_security(cfg)
    build, check, rebuild = [], [], []
    resources = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        spec = spec_from_config(cfg)
        model = build_model(spec, fixed_addresses(spec), {}, frozenset(), security)
        snap = translate(model, lua)
        t1 = time.perf_counter()
        errors = consistency_errors(snap)
        t2 = time.perf_counter()
        assert not errors, errors
        build.append((t1 - t0) * 1000)
        check.append((t2 - t1) * 1000)
        t0 = time.perf_counter()
        translate(build_model(spec, fixed_addresses(spec), {}, frozenset(), security), lua)
        rebuild.append((time.perf_counter() - t0) * 1000)
        resources = sum(len(snap.items(t)) for t in TYPES)
        hosts = sum(
            len(e.lb_endpoints)
            for cla in snap.items(ENDPOINT).values()
            for e in cla.endpoints  # type: ignore[attr-defined]
        )
    return {
        "parse_config_ms": round(parse_ms, 2),
        "build_ms": pct(build),
        "consistency_check_ms": pct(check),
        "rebuild_per_change_ms": pct(rebuild),
        "resources": resources,
        "hosts_in_eds": hosts,
    }


async def part_fleet(work: Path, scale: Scale) -> dict[str, Any]:
    small = cp_doc(fleet(1, 1, UNPROBED, prefix=2))
    big = {**small, "backends": fleet(scale.fleet_endpoints, scale.fleet_models, UNPROBED, 2)}
    built = time_build(big, scale.builds)
    print(f"(b) build: {json.dumps(built)}", flush=True)
    cp = ControlPlane(parse_config(small))
    envoy: Proc | None = None
    try:
        await cp.start()
        assert cp.ads is not None
        envoy, admin = start_envoy(work, small, 100)
        await wait_synced(cp, 1, [envoy], timeout=30)
        t0 = time.time()
        await cp.reload(parse_config(big))
        reload_ms = (time.time() - t0) * 1000
        snap = cp.cache.snapshot
        assert snap is not None
        for t in TYPES:
            if not await cp.ads.wait_acked(t, snap.version(t), 30):
                raise TimeoutError(f"{t} of the 1,000-endpoint fleet not ACKed in 30 s")
        stream = next(iter(cp.ads.streams.values()))
        last = max(stream.types[t].acked_at or 0.0 for t in TYPES)
        push_ms = (last - t0) * 1000
        await asyncio.sleep(0.5)
        hosts = await asyncio.to_thread(
            lambda: sum(
                envoy_counter(admin, f"cluster.{cluster_name(m)}.membership_total")
                for m in cp.state.spec.models
            )
        )
        drains = []
        keys = [v.key for v in cp.endpoints()]
        for i in range(scale.drains):
            gen = cp.cache.generation
            t0 = time.time()
            ok = await (cp.drain(keys[0]) if i % 2 == 0 else cp.undrain(keys[0]))
            assert ok and cp.cache.generation == gen + 1
            snap = cp.cache.snapshot
            assert snap is not None
            if not await cp.ads.wait_acked(ENDPOINT, snap.version(ENDPOINT), 30):
                raise TimeoutError("drain not ACKed in 30 s")
            drains.append(((stream.types[ENDPOINT].acked_at or 0.0) - t0) * 1000)
            await asyncio.sleep(0.1)
    finally:
        await cp.stop()
        if envoy is not None:
            envoy.stop()
    out = {
        "endpoints": scale.fleet_endpoints,
        "models": scale.fleet_models,
        "translation": built,
        "reload_call_ms": round(reload_ms, 1),
        "reload_to_envoy_acked_all_types_ms": round(push_ms, 1),
        "envoy_hosts_after_reload": hosts,
        "drain_to_eds_ack_ms": pct(drains),
    }
    print(f"(b) push: {json.dumps({k: v for k, v in out.items() if k != 'translation'})}")
    return out


# ---------------------------------------------------------------- (c) simulated streams


@dataclass
class SimStream:
    """One ADS client that asks and ACKs the way Envoy does (state of the world)."""

    index: int
    target: str
    versions: dict[str, str] = field(default_factory=dict)
    nonces: dict[str, str] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    eds_log: list[tuple[str, float]] = field(default_factory=list)  # (version, arrival)
    last_eds: discovery_pb2.DiscoveryResponse | None = None
    error: str | None = None
    changed: Callable[[], None] = lambda: None

    def arrival_since(self, mark: int, old: str) -> float | None:
        """When an EDS version other than `old` first came after log entry `mark`."""
        return next((at for v, at in self.eds_log[mark:] if v != old), None)

    def _request(self, type_url: str, nonce: str = "") -> discovery_pb2.DiscoveryRequest:
        return discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=self.versions.get(type_url, ""),
            response_nonce=nonce,
            resource_names=self.names.get(type_url, []),
        )

    async def run(self) -> None:
        options = [
            ("grpc.use_local_subchannel_pool", 1),  # one connection per stream, as Envoy
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        try:
            async with grpc.aio.insecure_channel(self.target, options=options) as channel:
                stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
                call = stub.StreamAggregatedResources()
                first = self._request(CLUSTER)
                first.node.id = f"cp-scale-sim-{self.index:03d}"
                first.node.cluster = "whisper-gateway"
                await call.write(first)
                await call.write(self._request(LISTENER))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        return
                    await self._on_response(call, resp)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.error = repr(e)
            self.changed()

    async def _on_response(self, call: Any, resp: discovery_pb2.DiscoveryResponse) -> None:
        now = time.perf_counter()
        t = resp.type_url
        self.versions[t] = resp.version_info
        self.nonces[t] = resp.nonce
        follow: tuple[str, list[str]] | None = None
        if t == ENDPOINT:
            self.eds_log.append((resp.version_info, now))
            self.last_eds = resp
        elif t == CLUSTER:
            follow = (ENDPOINT, sorted(eds_names(resp)))
        elif t == LISTENER:
            follow = (ROUTE, sorted(route_names(resp)))
        await call.write(self._request(t, resp.nonce))  # the ACK
        if follow is not None and follow[1] != self.names.get(follow[0]):
            self.names[follow[0]] = follow[1]
            await call.write(self._request(follow[0], self.nonces.get(follow[0], "")))
        self.changed()


def eds_names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for any_msg in resp.resources:
        c = cluster_pb2.Cluster()
        any_msg.Unpack(c)
        if c.type == cluster_pb2.Cluster.DiscoveryType.EDS:
            out.append(c.eds_cluster_config.service_name or c.name)
    return out


def route_names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for any_msg in resp.resources:
        lst = listener_pb2.Listener()
        any_msg.Unpack(lst)
        for chain in lst.filter_chains:
            for f in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(manager) and manager.HasField("rds"):
                    out.append(manager.rds.route_config_name)
    return out


def draining_in(resp: discovery_pb2.DiscoveryResponse, endpoint: str) -> bool:
    """The endpoint is DRAINING in this EDS response (what the change must carry)."""
    for any_msg in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment()
        any_msg.Unpack(cla)
        for group in cla.endpoints:
            for lb in group.lb_endpoints:
                sa = lb.endpoint.address.socket_address
                if f"{sa.address}:{sa.port_value}" == endpoint:
                    return bool(lb.health_status == health_check_pb2.DRAINING)
    return False


def cpu_s(pid: int) -> float:
    """utime + stime of the process (every thread), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Peak VmRSS of a pid, read every 5 ms from a thread (the event loop is busy)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = rss_kb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def http_json(url: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


async def wait_until(cond: Callable[[], bool], wake: asyncio.Event, timeout: float) -> bool:
    """Until cond() holds, re-checked each time a stream reports; False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        left = deadline - loop.time()
        if left <= 0:
            return False
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), min(left, 0.1))
        except TimeoutError:
            pass
    return True


async def part_streams(work: Path, scale: Scale) -> dict[str, Any]:
    doc = cp_doc(fleet(scale.stream_endpoints, scale.stream_models, UNPROBED, prefix=4))
    path = work / "cp-scale-streams.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    admin = f"http://127.0.0.1:{doc['admin']['port']}"
    cp = Proc(
        "control-plane", [PYTHON, "-m", "control_plane", "--config", str(path)], work / "cp.log"
    ).start()
    streams: list[SimStream] = []
    tasks: list[asyncio.Task[None]] = []
    wake = asyncio.Event()
    try:
        await asyncio.to_thread(wait_http, f"{admin}/healthz", 30, cp)
        versions = (await asyncio.to_thread(http_json, f"{admin}/status"))["versions"]
        want = {CLUSTER: versions["CDS"], ENDPOINT: versions["EDS"]}
        want |= {LISTENER: versions["LDS"], ROUTE: versions["RDS"]}
        target_addr = f"127.0.0.1:{doc['xds']['port']}"
        streams = [SimStream(i, target_addr, changed=wake.set) for i in range(scale.streams)]

        def all_synced() -> bool:
            return all(s.versions == want and len(s.names) == 2 for s in streams)

        def failed() -> list[str]:
            return [f"{s.index}: {s.error}" for s in streams if s.error][:5]

        cpu0, rss0 = cpu_s(cp.pid), rss_kb(cp.pid)
        t0 = time.perf_counter()
        with RssSampler(cp.pid) as rss:
            tasks = [asyncio.create_task(s.run()) for s in streams]
            ok = await wait_until(lambda: all_synced() or bool(failed()), wake, 120)
            connect_s = time.perf_counter() - t0
        if not ok or failed():
            raise RuntimeError(f"streams did not sync: {failed()}")
        connect = {
            "all_synced_s": round(connect_s, 2),
            "cpu_s": round(cpu_s(cp.pid) - cpu0, 2),
            "rss_before_mb": round(rss0 / 1024, 1),
            "rss_peak_mb": round(rss.peak_kb / 1024, 1),
        }
        print(f"(c) {scale.streams} streams connect: {json.dumps(connect)}", flush=True)
        await asyncio.sleep(1.0)
        http = await asyncio.to_thread(http_json, f"{admin}/status")
        acked = sum(
            1 for p in http["proxies"] if all(t["state"] == "SYNCED" for t in p["types"].values())
        )
        assert acked == scale.streams, f"{acked} of {scale.streams} SYNCED in /status"
        endpoint = f"127.4.0.1:{NOWHERE_PORT}"
        changes = []
        for i in range(scale.changes):
            old = want[ENDPOINT]
            verb = "drain" if i % 2 == 0 else "undrain"
            marks = [len(s.eds_log) for s in streams]
            cpu0, rss0 = cpu_s(cp.pid), rss_kb(cp.pid)
            t0 = time.perf_counter()
            with RssSampler(cp.pid) as rss:
                post = asyncio.create_task(
                    asyncio.to_thread(http_json, f"{admin}/backends/{endpoint}/{verb}", "POST")
                )

                def reached(marks: list[int] = marks, old: str = old) -> bool:
                    return bool(failed()) or all(
                        s.arrival_since(m, old) is not None
                        for s, m in zip(streams, marks, strict=True)
                    )

                ok = await wait_until(reached, wake, 60)
                t_all = time.perf_counter()
                cpu_reached = cpu_s(cp.pid) - cpu0
                await post
                # The ACKs are read after the last arrival: give them a moment, then
                # the control plane's CPU for the whole change.
                await asyncio.sleep(0.5)
                cpu_all = cpu_s(cp.pid) - cpu0
            if not ok or failed():
                raise RuntimeError(f"change did not reach every stream: {failed()}")
            # The control plane's own view: every stream ACKed the new version.
            for _ in range(50):
                status = await asyncio.to_thread(http_json, f"{admin}/status")
                new = status["versions"]["EDS"]
                in_sync = sum(
                    1 for p in status["proxies"] if p["types"]["EDS"]["state"] == "SYNCED"
                )
                if in_sync == scale.streams:
                    break
                await asyncio.sleep(0.1)
            assert new != old and in_sync == scale.streams, f"{in_sync} streams ACKed {new}"
            arrivals = []
            for s, m in zip(streams, marks, strict=True):
                at = s.arrival_since(m, old)
                assert at is not None and s.versions[ENDPOINT] == new
                arrivals.append((at - t0) * 1000)
            last = streams[0].last_eds
            assert last is not None and draining_in(last, endpoint) == (verb == "drain")
            want[ENDPOINT] = new
            row = {
                "change": verb,
                "to_stream_ms": pct(arrivals),
                "admin_post_to_all_received_ms": round((t_all - t0) * 1000, 1),
                "cp_cpu_s_until_all_received": round(cpu_reached, 2),
                "cp_cpu_s_including_acks": round(cpu_all, 2),
                "cp_rss_before_mb": round(rss0 / 1024, 1),
                "cp_rss_peak_mb": round(rss.peak_kb / 1024, 1),
                "streams_acked_in_status": in_sync,
            }
            print(f"(c) change: {json.dumps(row)}", flush=True)
            changes.append(row)
            await asyncio.sleep(0.5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cp.stop()
    return {
        "streams": scale.streams,
        "endpoints": scale.stream_endpoints,
        "models": scale.stream_models,
        "client": "one Python process (grpc.aio), one connection per stream: its own "
        "event loop adds to every figure, so they are upper bounds",
        "connect_at_once": connect,
        "changes": changes,
    }


# ---------------------------------------------------------------- main


async def run(scale: Scale) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-cp-scale-"))
    print(f"logs in {work}", flush=True)
    load = os.getloadavg()[0]
    envoys = await part_envoys(work, scale)
    fleet_ = await part_fleet(work, scale)
    streams = await part_streams(work, scale)
    top = envoys["sizes"][-1]
    worst_stream = max(c["to_stream_ms"]["max"] for c in streams["changes"])
    reload_ms = fleet_["reload_to_envoy_acked_all_types_ms"]
    build_ms = fleet_["translation"]["build_ms"]["median"]
    targets = [
        target(
            f"one verdict -> EDS ACKed by all {top['envoys']} Envoys (max of {scale.flips} flips)",
            f"<= {ENVOYS_TARGET_MS:.0f} ms",
            top["verdict_to_last_eds_ack_ms"]["max"],
            top["verdict_to_last_eds_ack_ms"]["max"] <= ENVOYS_TARGET_MS,
        ),
        target(
            f"one change -> new EDS at all {streams['streams']} ADS streams (worst of "
            f"{len(streams['changes'])})",
            f"<= {STREAMS_TARGET_MS:.0f} ms",
            worst_stream,
            worst_stream <= STREAMS_TARGET_MS,
        ),
        target(
            f"build of {fleet_['endpoints']} endpoints over {fleet_['models']} models (median)",
            f"< {BUILD_TARGET_MS:.0f} ms",
            build_ms,
            build_ms < BUILD_TARGET_MS,
        ),
        target(
            f"reload to {fleet_['endpoints']} endpoints -> one Envoy ACKed every type",
            f"< {RELOAD_TARGET_MS:.0f} ms",
            reload_ms,
            reload_ms < RELOAD_TARGET_MS,
        ),
    ]
    return {
        "smoke": scale is SMOKE,
        "load_before": load,
        "envoys": envoys,
        "fleet": fleet_,
        "streams": streams,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true", help="tiny counts: proves it runs")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = asyncio.run(run(SMOKE if args.smoke else FULL))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["command"] = ".venv/bin/python -m bench.cp_scale" + (" --smoke" if args.smoke else "")
    path = write_result("cp_scale", result)
    for t in result["targets"]:
        print(
            f"target {t['name']}: {t['value']} ({t['target']}): {'met' if t['met'] else 'MISSED'}"
        )
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
