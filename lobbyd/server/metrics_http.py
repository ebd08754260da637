"""Serve the metrics to Prometheus over HTTP on a loopback port.

A minimal HTTP/1.1 responder on the event loop: one request per connection, then
close. ``GET /metrics`` (and ``HEAD``) returns the Prometheus text format, or
OpenMetrics when the scraper's Accept header requests it. The page is rendered on
the event loop, so the collectors read the daemon's state without a lock and
without a thread. A request's head is bounded in size and time, like every other
read of the daemon.
"""

from __future__ import annotations

import asyncio
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from lobbyd.server import logs

# A scraper's request head is a few hundred bytes. 8 KiB matches the header line
# limits of nginx (large_client_header_buffers 8k) and Apache (LimitRequestFieldSize 8190).
MAX_HEAD_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0
METRICS_PATH: Final = "/metrics"

log = logs.get(__name__)


async def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> asyncio.Server:
    """Listen on ``host``:``port`` and serve ``registry``; raises OSError if the port is taken."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # One bound for the whole exchange, so a scraper that stops reading
            # cannot hold its connection open either.
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                await _serve_one(reader, writer, registry)
        except (TimeoutError, ConnectionError):
            return
        except Exception:
            log.exception("metrics_request_failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES, reuse_address=True)


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registry: CollectorRegistry) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return
    except asyncio.LimitOverrunError:
        await _respond(writer, "431 Request Header Fields Too Large", b"request head too large\n")
        return

    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        await _respond(writer, "400 Bad Request", b"malformed request line\n")
        return
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        await _respond(writer, "405 Method Not Allowed", b"use GET\n", extra=("Allow: GET, HEAD",))
        return
    if target != METRICS_PATH:
        await _respond(writer, "404 Not Found", f"metrics are at {METRICS_PATH}\n".encode())
        return

    encode, content_type = choose_encoder(_header(lines[1:], "accept"))
    body = encode(registry)
    await _respond(writer, "200 OK", body, content_type=content_type, send_body=method == "GET")


def _header(lines: list[str], name: str) -> str:
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return ""


async def _respond(
    writer: asyncio.StreamWriter,
    status: str,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: tuple[str, ...] = (),
    send_body: bool = True,
) -> None:
    head = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    head += [*extra, "Connection: close", "", ""]
    writer.write("\r\n".join(head).encode("latin-1"))
    if send_body:
        writer.write(body)
    await writer.drain()
