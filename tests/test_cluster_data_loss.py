"""A cluster whose Redis comes back empty, as after a restart without persistence.

Every key of the cluster is deleted at once while players are queued and connected.
The nodes must notice, elect a leader again, tell each player they believed queued
that they are not, and go on matching new requests without a restart.
"""

from __future__ import annotations

import redis

from lobbyd.client import LobbyClient
from tests.cluster import Cluster, join, login, wait_until


def wipe(cluster: Cluster) -> int:
    """Delete every key under the cluster's prefix; return how many there were."""
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{cluster.prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


async def test_redis_comes_back_empty(cluster: Cluster) -> None:
    nodes = cluster.start_many(3)
    _, old_token = await cluster.wait_for_leader()
    clients: list[LobbyClient] = []
    try:
        queued = [await login(nodes[index], f"q{index}") for index in range(3)]
        clients += queued
        for client in queued:
            await join(client, "5v5")
        await wait_until(lambda: len(cluster.tickets()) == 3, message="three tickets in Redis")

        assert wipe(cluster) > 0

        # Each player a node believed queued learns that the ticket is gone.
        for client in queued:
            left = await client.recv_type("left_queue", timeout=20)
            assert left == {"type": "left_queue", "queue": "5v5", "reason": "unavailable"}
        # Fencing tokens keep growing from an empty Redis, so no delivery id repeats an
        # old one that the nodes would drop as already seen.
        _, new_token = await cluster.wait_for_leader(timeout=20)
        assert new_token > old_token
        await wait_until(lambda: {"q0", "q1", "q2"} <= set(cluster.presence()), timeout=20, message="presence claimed")

        # The cluster serves again: a 1v1 across two nodes forms and starts.
        first = await login(nodes[0], "after0")
        second = await login(nodes[1], "after1")
        clients += [first, second]
        for client in (first, second):
            await join(client, "1v1")
        match = (await first.recv_type("match_found", timeout=15))["match"]
        await second.recv_type("match_found", timeout=15)
        for client in (first, second):
            await client.request("accept", match=match)
        for client in (first, second):
            start = await client.recv_type("match_start", timeout=15)
            assert start["match"] == match
        for daemon in nodes:
            assert daemon.process.poll() is None
    finally:
        for client in clients:
            await client.close()
