"""Fuzz input for the daemon's socket: valid client messages, then mutations of them.

Mutations work at two levels. ``mutate_message`` changes the map before encoding
(drops a field, swaps a value for one of another type, adds fields, nests deeply),
so the frame stays well-formed and reaches validation. ``mutate_bytes`` changes
the encoded frame (flips bits, inserts, deletes, truncates, rewrites the length
prefix), so it reaches the framing and the decoders. Every function takes the
caller's ``random.Random``, so a seed replays a run.
"""

from __future__ import annotations

import random
import string
from typing import Any, Final

import msgspec

QUEUES: Final = ("1v1", "5v5", "ranked", "")
LENGTH_PREFIX: Final = 4
# Deep enough to pass the decoders' recursion limit of about 1,000 levels.
DEEP_NESTING: Final = 3000
# A frame near the daemon's default max_frame_bytes of 65,536, and one past it.
NEAR_MAX_FRAME: Final = 65_000
PAST_MAX_FRAME: Final = 70_000


def valid_message(rng: random.Random, players: int, matches: list[str]) -> dict[str, Any]:
    """Return a well-formed client message; accept and decline name a match seen recently."""
    kind = rng.choice(["hello", "ping", "ping", "join_queue", "leave_queue", "accept", "decline"])
    message: dict[str, Any] = {"type": kind}
    if rng.random() < 0.8:
        message["rid"] = rng.randrange(2**32)
    if kind == "hello":
        message.update(v=1, player=f"fz{rng.randrange(players)}")
    elif kind == "join_queue":
        message["queue"] = rng.choice(QUEUES[:2])
    elif kind in ("accept", "decline"):
        message["match"] = rng.choice(matches) if matches else f"m{rng.randrange(1000)}"
    return message


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Return a value of a random type: the kinds of field a decoder must reject or bound."""
    choices: list[Any] = [
        None,
        True,
        rng.randrange(-(2**63), 2**64),
        rng.choice([-1, 0, 2**53 + 1, 2**63 - 1, 2**64 - 1]),
        rng.choice([0.5, -0.0, float("inf"), float("nan"), 1e308]),
        "",
        _random_text(rng, rng.randrange(1, 80)),
        "x" * rng.choice([65, 1024, 20_000]),
        rng.randbytes(rng.randrange(0, 64)),
    ]
    if depth < 3:
        choices.append([random_value(rng, depth + 1) for _ in range(rng.randrange(4))])
        choices.append({_random_text(rng, 5): random_value(rng, depth + 1) for _ in range(rng.randrange(4))})
    return rng.choice(choices)


def mutate_message(message: dict[str, Any], rng: random.Random) -> Any:
    """Return a copy of ``message`` with one structural change."""
    mutated = dict(message)
    keys = list(mutated)
    operation = rng.randrange(7)
    if operation == 0 and keys:
        del mutated[rng.choice(keys)]
    elif operation == 1 and keys:
        mutated[rng.choice(keys)] = random_value(rng)
    elif operation == 2:
        mutated[_random_text(rng, rng.randrange(1, 12))] = random_value(rng)
    elif operation == 3:
        mutated["type"] = rng.choice([_random_text(rng, 8), "x" * 20_000, "HELLO", "pong", "welcome"])
    elif operation == 4:
        mutated["rid"] = rng.choice([-1, 2**64 - 1, "7", 1.5, True, None])
    elif operation == 5:
        return random_value(rng)
    else:
        mutated["pad"] = "p" * rng.choice([NEAR_MAX_FRAME, PAST_MAX_FRAME])
    return mutated


def encode(value: Any, binary: bool) -> bytes:
    """Encode ``value`` as one frame: length-prefixed msgpack or a JSON line."""
    if binary:
        payload = msgspec.msgpack.encode(value)
        return len(payload).to_bytes(LENGTH_PREFIX, "big") + payload
    return msgspec.json.encode(value) + b"\n"


def deeply_nested(binary: bool) -> bytes:
    """Return a ping whose rid nests arrays DEEP_NESTING levels deep."""
    if binary:
        # 0x82: map of 2; 0xa4 "type", 0xa4 "ping", 0xa3 "rid"; 0x91: array of 1; 0xc0: nil.
        payload = b"\x82\xa4type\xa4ping\xa3rid" + b"\x91" * DEEP_NESTING + b"\xc0"
        return len(payload).to_bytes(LENGTH_PREFIX, "big") + payload
    return b'{"type":"ping","rid":' + b"[" * DEEP_NESTING + b"]" * DEEP_NESTING + b"}\n"


def mutate_bytes(frame: bytes, rng: random.Random, binary: bool) -> bytes:
    """Return ``frame`` with one to four byte-level changes."""
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        operation = rng.randrange(7)
        position = rng.randrange(len(data) + 1)
        if operation == 0 and data:
            data[min(position, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif operation == 1:
            data[position:position] = rng.randbytes(rng.randrange(1, 16))
        elif operation == 2:
            del data[position : position + rng.randrange(1, 16)]
        elif operation == 3:
            del data[position:]
        elif operation == 4:
            data[position:position] = data[: rng.randrange(1, 32)]
        elif operation == 5 and binary:
            data[:LENGTH_PREFIX] = rng.choice([0, 1, 3, 65_536, 65_537, 2**32 - 1]).to_bytes(LENGTH_PREFIX, "big")
        else:
            data[position:position] = rng.choice([b"\n", b"\r\n", b"{", b"\x00", b"\xff"])
    return bytes(data)


def random_bytes(rng: random.Random) -> bytes:
    """Return noise, sometimes led by a byte that selects a framing."""
    lead = rng.choice([b"", b"{", b"\x00", b"\x00\x00"])
    return lead + rng.randbytes(rng.randrange(1, 4096))


def split_stream(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut ``data`` into the writes that carry it: whole, at random points, or byte by byte."""
    style = rng.random()
    if style < 0.5 or len(data) < 2:
        return [data]
    if style < 0.9:
        cuts = sorted(rng.sample(range(1, len(data)), min(rng.randint(1, 8), len(data) - 1)))
        return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    head = data[:64]
    return [head[i : i + 1] for i in range(len(head))] + ([data[64:]] if len(data) > 64 else [])


def _random_text(rng: random.Random, length: int) -> str:
    alphabet = string.ascii_letters + string.digits + "_.-é😀\u0000 "
    return "".join(rng.choice(alphabet) for _ in range(length))
