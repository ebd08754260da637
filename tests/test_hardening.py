"""Bounds on what one abusive client can make the daemon send and log."""

from __future__ import annotations

import asyncio

import pytest

from lobbyd.errors import UnknownType
from lobbyd.protocol.codec import MAX_ECHOED_CHARS, Codec
from tests.conftest import ClientFactory, ServerFactory


async def test_invalid_messages_rate_limited(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(rate_limit_per_s=5, rate_limit_burst=5)
    calm = await connect("calm")
    noisy = await connect("noisy", json_lines=True)
    # Let the bucket refill after hello.
    await asyncio.sleep(1.2)

    noisy.writer.write(b'{"type":"nonsense"}\n' * 40)
    codes = []
    while True:
        reply = await noisy.recv()
        if reply["type"] == "kicked":
            break
        codes.append(reply["code"])
    assert reply == {"type": "kicked", "reason": "rate_limited"}
    assert codes[:5] == ["unknown_type"] * 5
    assert set(codes[5:]) == {"rate_limited"}
    assert len(codes) < 20

    rid = await calm.request("ping")
    assert await calm.recv() == {"type": "pong", "rid": rid}


@pytest.mark.parametrize("length", [MAX_ECHOED_CHARS, 30_000])
def test_unknown_type_echo_clipped(length: int) -> None:
    codec = Codec()
    codec.receive_data(b'{"type":"' + b"y" * length + b'"}\n')
    with pytest.raises(UnknownType) as caught:
        codec.next_message()
    assert "y" * MAX_ECHOED_CHARS in caught.value.message
    assert "y" * (MAX_ECHOED_CHARS + 1) not in caught.value.message
    assert len(caught.value.message) < 200 + MAX_ECHOED_CHARS
