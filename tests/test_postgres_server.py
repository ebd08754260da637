"""The single-node daemon on the PostgreSQL store: a started match is stored there."""

from __future__ import annotations

from lobbyd.store.postgres import PostgresStore
from tests.conftest import ClientFactory, ServerFactory
from tests.services import Service


async def test_started_match_stored_in_postgres(
    start_server: ServerFactory, connect: ClientFactory, postgres_service: Service, pg_schema: str
) -> None:
    await start_server(store="postgres", postgres_dsn=postgres_service.url, postgres_schema=pg_schema)
    a, b = await connect("pg-alice"), await connect("pg-bob")
    for client in (a, b):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await a.recv_type("match_found"))["match"]
    for client in (a, b):
        await client.request("accept", match=match)
    start = await a.recv_type("match_start")

    reader = PostgresStore(postgres_service.url, schema=pg_schema)
    await reader.open()
    try:
        stored = await reader.load_match(match)
        assert stored is not None
        assert [list(team) for team in stored.teams] == start["teams"]
        assert await reader.load_player("pg-alice") is not None
    finally:
        await reader.close()
