"""A cluster of three lobbyd processes survives its faults.

* The leader process is killed: another node takes the lease within the lease time
  plus one tick; the dead node's players leave queues and ready checks, and the
  others keep their place and their wait.
* The leader is paused (SIGSTOP) past its lease and resumed (SIGCONT): it commits
  nothing once the new leader took over, and no player ends in two matches.
* Redis is unreachable for 30 s: nodes keep their sessions, answer ``join_queue``
  with ``unavailable`` and a retry hint, recover without a restart, and tell each
  queued player whether they still are.
* PostgreSQL restarts during a run: writes retry, and every match a client saw
  start is stored.

Redis becomes unreachable through a ``ProcessProxy`` that drops every connection and
refuses new ones. PostgreSQL is restarted for real when the test session started it,
and cut off by such a proxy when the environment named it.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from lobbyd.client import ClientError, LobbyClient
from tests.cluster import LEASE_MS, TICK_MS, Cluster, join, login, wait_until
from tests.daemon import DaemonProcess
from tests.services import ProcessProxy, Service, host_port, with_host_port

pytestmark = pytest.mark.slow

# Scheduling slack for three daemons and the test on a 2-CPU machine.
SLACK_S = 0.5


def event_time(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


async def close_all(clients: list[LobbyClient]) -> None:
    for client in clients:
        await client.close()


@pytest.fixture
async def opened() -> AsyncIterator[list[LobbyClient]]:
    """Collect the clients a test opens and close them afterwards, even when it fails."""
    clients: list[LobbyClient] = []
    yield clients
    await close_all(clients)


async def accept(client: LobbyClient, match: str) -> None:
    """Accept ``match``, retrying after ``unavailable`` as a client should.

    A node that was paused finds its Redis deadlines passed when it wakes, and
    answers ``unavailable`` until its next successful call.
    """
    for _ in range(10):
        rid = await client.request("accept", match=match)
        reply = await client.recv_type("accepted", "error")
        if reply["type"] == "accepted":
            assert reply["rid"] == rid
            return
        assert reply["code"] == "unavailable", reply
        await asyncio.sleep(reply["retry_after_ms"] / 1000)
    raise AssertionError(f"accept of {match} still unavailable after 10 tries")


async def track(opened: list[LobbyClient], daemon: DaemonProcess, player: str) -> LobbyClient:
    client = await login(daemon, player)
    opened.append(client)
    return client


async def test_leader_killed(cluster: Cluster, opened: list[LobbyClient]) -> None:
    nodes = {daemon.address: daemon for daemon in cluster.start_many(3)}
    old_leader, old_token = await cluster.wait_for_leader()
    dead = cluster.nodes[old_leader]
    survivors = [daemon for daemon in nodes.values() if daemon is not dead]

    # Three 5v5 players on the leader's node and three on each other node: too few to match.
    doomed = [await track(opened, dead, f"d{index}") for index in range(3)]
    kept = [await track(opened, survivors[index % 2], f"k{index}") for index in range(6)]
    for client in doomed + kept:
        await join(client, "5v5")
    # A 1v1 ready check between the leader's node and another node; the survivor accepts.
    victim = await track(opened, dead, "victim")
    partner = await track(opened, survivors[0], "partner")
    for client in (victim, partner):
        await join(client, "1v1")
    match = (await partner.recv_type("match_found"))["match"]
    await partner.request("accept", match=match)
    await partner.recv_type("accepted")
    before = cluster.tickets()
    assert set(before) == {f"d{index}" for index in range(3)} | {f"k{index}" for index in range(6)}

    dead.process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, new_token = await cluster.wait_for_leader(not_node=old_leader)
    takeover_s = time.time() - killed_at

    print(f"takeover after the kill: {takeover_s * 1000:.0f} ms")
    assert new_token > old_token
    assert takeover_s <= (LEASE_MS + TICK_MS) / 1000 + SLACK_S
    cancelled = await partner.recv_type("match_cancelled", timeout=15)
    assert cancelled == {"type": "match_cancelled", "match": match, "reason": "disconnected", "requeued": True}
    expected = {f"k{index}" for index in range(6)} | {"partner"}
    await wait_until(lambda: set(cluster.tickets()) == expected, timeout=15, message="dead node's tickets removed")
    after = cluster.tickets()
    for index in range(6):
        player = f"k{index}"
        assert after[player].waiting_since == before[player].waiting_since, player
        assert after[player].priority is False
    assert after["partner"].priority is True
    assert not {f"d{index}" for index in range(3)} & set(cluster.presence())

    # The survivors' wait still counts: four newcomers complete a 5v5 with all six.
    newcomers = [await track(opened, survivors[index % 2], f"n{index}") for index in range(4)]
    for client in newcomers:
        await join(client, "5v5")
    found = [await client.recv_type("match_found", timeout=10) for client in kept + newcomers]
    assert len({message["match"] for message in found}) == 1
    for client, message in zip(kept + newcomers, found, strict=True):
        await client.request("accept", match=message["match"])
    for client in kept + newcomers:
        start = await client.recv_type("match_start", timeout=10)
        assert len(start["teams"][0]) == 5


async def test_paused_leader_commits_nothing(cluster: Cluster, opened: list[LobbyClient]) -> None:
    # Liveness outlasts the pause, so the paused node's players stay in the lobby.
    cluster.start_many(3, node_ttl_ms=10_000)
    old_leader, old_token = await cluster.wait_for_leader()
    paused = cluster.nodes[old_leader]
    others = [daemon for name, daemon in cluster.nodes.items() if name != old_leader]
    # When it stops, the paused leader has one queued player in memory.
    first = await track(opened, paused, "first")
    await join(first, "1v1")

    paused.process.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    try:
        new_leader, new_token = await cluster.wait_for_leader(not_node=old_leader)
        # Joins the old leader never saw: on waking it finds them in the request
        # stream and matches them from its stale memory, which it must not commit.
        second = await track(opened, others[0], "second")
        await join(second, "1v1")
        third = await track(opened, others[1], "third")
        await join(third, "1v1")
        fourth = await track(opened, others[1], "fourth")
        await join(fourth, "1v1")
        await asyncio.sleep((LEASE_MS + TICK_MS) / 1000)
    finally:
        paused.process.send_signal(signal.SIGCONT)
    resumed_at = time.time()

    await wait_until(lambda: cluster.events(old_leader, "leadership_lost"), message="the old leader stepped down")
    lost = cluster.events(old_leader, "leadership_lost")[0]
    print(f"old leader, token {old_token}: {lost['reason']}")
    assert new_token > old_token
    assert cluster.leader() == (new_leader, new_token)
    late = [e for e in cluster.events(old_leader, "match_found") if event_time(e) >= paused_at]
    assert late == []

    # Every match a client receives comes from the new leader, and no player is in two.
    clients = {"first": first, "second": second, "third": third, "fourth": fourth}
    matches: dict[str, str] = {}
    for player, client in clients.items():
        found = await client.recv_type("match_found", timeout=10)
        matches[player] = found["match"]
        await accept(client, found["match"])
    assert sorted(Counter(matches.values()).values()) == [2, 2]
    started = {}
    for player, client in clients.items():
        started[player] = (await client.recv_type("match_start", timeout=10))["match"]
    assert started == matches
    new_found = {e["match"] for e in cluster.events(new_leader, "match_found")}
    assert set(matches.values()) <= new_found
    assert resumed_at > paused_at


async def test_redis_unreachable_30s(cluster: Cluster) -> None:
    proxy = ProcessProxy(host_port(cluster.redis_url))
    try:
        await run_redis_outage(cluster, proxy)
    finally:
        proxy.close()


async def run_redis_outage(cluster: Cluster, proxy: ProcessProxy) -> None:
    through_proxy = with_host_port(cluster.redis_url, proxy.address)
    nodes = [
        cluster.start(f"n{index}", redis_url=through_proxy, redis_timeout_ms=500, ready_check_timeout_ms=5000)
        for index in range(3)  # a ready check expires during the outage
    ]
    _, old_token = await cluster.wait_for_leader()
    clients: list[LobbyClient] = []
    try:
        queued = await login(nodes[0], "queued")
        idle = await login(nodes[1], "idle")
        eager = await login(nodes[0], "eager")
        sleepy = await login(nodes[2], "sleepy")
        clients += [queued, idle, eager, sleepy]
        await join(queued, "5v5")
        # A 1v1 ready check in progress when Redis goes away; one side accepted.
        for client in (eager, sleepy):
            await join(client, "1v1")
        match = (await eager.recv_type("match_found"))["match"]
        await sleepy.recv_type("match_found")
        await eager.request("accept", match=match)
        await eager.recv_type("accepted")
        waiting_since = cluster.tickets()["queued"].waiting_since

        proxy.cut()
        cut_at = time.monotonic()
        await asyncio.sleep(2)
        rid = await idle.request("join_queue", queue="1v1")
        refused = await idle.recv_type("error")
        assert refused["code"] == "unavailable"
        assert refused["rid"] == rid
        assert refused["retry_after_ms"] > 0
        # A login during the outage is welcomed by its node alone.
        latecomer = await login(nodes[1], "latecomer")
        clients.append(latecomer)
        while time.monotonic() - cut_at < 30:
            # Pings keep the sessions alive through the outage; each node replies on its own.
            for client in clients:
                pong_rid = await client.request("ping")
                assert await client.recv_type("pong") == {"type": "pong", "rid": pong_rid}
            await asyncio.sleep(5)
        proxy.restore()

        for name in ("n0", "n1", "n2"):
            await wait_until(
                lambda name=name: cluster.events(name, "redis_reachable_again"), timeout=15, message=f"{name} recovered"
            )
            assert cluster.nodes[name].process.poll() is None, name
        still = await queued.recv_type("queued", timeout=15)
        assert still == {"type": "queued", "queue": "5v5"}
        first = await eager.recv_type("match_cancelled", timeout=15)
        second = await sleepy.recv_type("match_cancelled", timeout=15)
        assert first == {"type": "match_cancelled", "match": match, "reason": "expired", "requeued": True}
        assert second == {"type": "match_cancelled", "match": match, "reason": "expired", "requeued": False}
        assert cluster.tickets()["queued"].waiting_since == waiting_since
        await join(idle, "1v1")
        await wait_until(lambda: "latecomer" in cluster.presence(), message="the latecomer's presence claimed")
        assert cluster.presence()["latecomer"].node == "n1"
        _, new_token = await cluster.wait_for_leader()
        assert new_token > old_token
    finally:
        await close_all(clients)


async def bot(address: str, player: str, seen: dict[str, list[list[str]]], stop: asyncio.Event) -> None:
    """Queue, accept and queue again until ``stop`` is set; record every match_start received."""
    try:
        client = await LobbyClient.connect(address)
    except OSError:
        return
    try:
        await client.hello(player)
        queue = "1v1" if player.endswith(("0", "5")) else "5v5"
        while not stop.is_set():
            await client.request("join_queue", queue=queue)
            while not stop.is_set():
                try:
                    message = await client.recv(timeout=0.5)
                except TimeoutError:
                    continue
                if message["type"] == "match_found":
                    await client.request("accept", match=message["match"])
                elif message["type"] == "match_start":
                    seen[message["match"]] = message["teams"]
                    break
                elif message["type"] == "match_cancelled" and not message["requeued"]:
                    break
                elif message["type"] == "error" and message["code"] != "already_queued":
                    await asyncio.sleep(0.2)
                    break
    except (ClientError, ConnectionError, OSError):
        return
    finally:
        await client.close()


async def test_postgres_restart_loses_nothing(cluster: Cluster, postgres_service: Service) -> None:
    # PostgreSQL restarts for real when this test session runs it. Otherwise a proxy
    # drops every connection and refuses new ones for as long as a restart takes.
    proxy = None if postgres_service.restart is not None else ProcessProxy(host_port(cluster.pg_dsn))
    try:
        dsn = cluster.pg_dsn if proxy is None else with_host_port(cluster.pg_dsn, proxy.address)
        nodes: list[DaemonProcess] = [cluster.start(f"n{index}", postgres_dsn=dsn) for index in range(3)]
        await cluster.wait_for_leader()
        seen: dict[str, list[list[str]]] = {}
        stop = asyncio.Event()
        rng = random.Random(11)
        bots = [
            asyncio.create_task(bot(rng.choice(nodes).address, f"b{index}", seen, stop)) for index in range(30)
        ]
        await asyncio.sleep(2)
        before_cut = len(seen)
        if postgres_service.restart is not None:
            await asyncio.to_thread(postgres_service.restart, 2.5)
        else:
            assert proxy is not None
            proxy.cut()
            await asyncio.sleep(2.5)
            proxy.restore()
        # Flushes retry with backoff of up to 5 s, so on a loaded machine new starts
        # may take that long to appear after the store is back.
        for _ in range(30):
            await asyncio.sleep(0.5)
            if len(seen) > before_cut + 5:
                break
        stop.set()
        _, stuck = await asyncio.wait(bots, timeout=10)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*bots, return_exceptions=True)
    finally:
        if proxy is not None:
            proxy.close()

    assert before_cut > 0
    assert len(seen) > before_cut
    connection = await asyncpg.connect(cluster.pg_dsn)
    try:
        rows = await connection.fetch(
            f'SELECT id, teams::text FROM "{cluster.schema}".matches WHERE state = $1', "started"
        )
    finally:
        await connection.close()
    stored = {row["id"] for row in rows}
    missing = sorted(set(seen) - stored)
    print(f"{len(seen)} matches started, {before_cut} before the restart")
    assert missing == [], f"{len(missing)} of {len(seen)} started matches not stored"
    failures = sum(len(cluster.events(name, "flush_failed")) for name in cluster.nodes)
    failures += sum(len(cluster.events(name, "match_commit_failed")) for name in cluster.nodes)
    assert failures > 0, "the restart was not noticed: no write failed"
