"""The queue event recording: what players did, in order, as JSON lines.

The first line of a recording is a header, ``{"type": "header", "format":
"lobbyd-events", "version": 1, ...}``; every later line is one event with a
``type`` and a time ``t`` in seconds: since the epoch from a daemon, since the
start from a population. A daemon appends to its recording across
restarts, so a header may appear again further down; each header starts a new
segment and must carry a version this reader knows.

Events are what the matchmaker cannot decide by itself: a ``join`` (the player's
rating and skill as the matchmaker saw them, their party, role preferences and
latencies, and the hidden skill when a population model made the player), a
``leave``, an ``offer`` of a match, each player's ``accept`` or ``decline``, and a
``disconnect``. The offline engine replays joins, leaves and spontaneous
disconnects at their times, and answers each of its own ready checks with the
player's next recorded answer, delayed as long after the offer as in the recording.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

FORMAT: Final = "lobbyd-events"
VERSION: Final = 1

Seconds = Annotated[float, msgspec.Meta(ge=0)]


class Header(msgspec.Struct, tag="header", tag_field="type", kw_only=True, frozen=True):
    format: Literal["lobbyd-events"] = FORMAT
    version: int = VERSION
    source: Literal["daemon", "population"]
    started_at: float
    """Seconds since the Unix epoch when the recording began; 0 for a population."""
    tick_interval_s: float | None = None
    """The recording daemon's matchmaker interval; replays use their own config's."""


class Member(msgspec.Struct, kw_only=True, frozen=True):
    """One party member other than the leader, as the matchmaker saw them at the join."""

    player: str
    rating: int
    mu: float | None = None
    """None for a player without a rated match: their skill is derived from ``rating``."""
    sigma: float | None = None
    skill: float | None = None
    """Hidden true skill in OpenSkill mu units; only a population model knows it."""
    roles: list[str] = msgspec.field(default_factory=list)
    latency: dict[str, float] = msgspec.field(default_factory=dict)


class Join(msgspec.Struct, tag="join", tag_field="type", kw_only=True, frozen=True):
    """A ``join_queue``: a solo player, or a party leader with ``members``."""

    t: Seconds
    player: str
    queue: str
    rating: int
    mu: float | None = None
    sigma: float | None = None
    skill: float | None = None
    members: list[Member] = msgspec.field(default_factory=list)
    roles: list[str] = msgspec.field(default_factory=list)
    """Roles the player wants, most wanted first; empty when the queue has no roles."""
    latency: dict[str, float] = msgspec.field(default_factory=dict)
    """Round-trip time in milliseconds to each region the player measured."""

    @property
    def players(self) -> list[str]:
        return [self.player, *(member.player for member in self.members)]


class Leave(msgspec.Struct, tag="leave", tag_field="type", kw_only=True, frozen=True):
    t: Seconds
    player: str


class Offer(msgspec.Struct, tag="offer", tag_field="type", kw_only=True, frozen=True):
    """A ``match_found`` sent to every player of a new ready check."""

    t: Seconds
    match: str
    queue: str
    players: list[str]


class Accept(msgspec.Struct, tag="accept", tag_field="type", kw_only=True, frozen=True):
    t: Seconds
    player: str
    match: str


class Decline(msgspec.Struct, tag="decline", tag_field="type", kw_only=True, frozen=True):
    t: Seconds
    player: str
    match: str


class Disconnect(msgspec.Struct, tag="disconnect", tag_field="type", kw_only=True, frozen=True):
    """A lost connection; ``match`` is the ready check it cancelled, if any."""

    t: Seconds
    player: str
    match: str | None = None


Event = Join | Leave | Offer | Accept | Decline | Disconnect
Line = Header | Event

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Line)


class RecordingError(ValueError):
    """A recording that cannot be read: the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Recording:
    header: Header
    events: list[Event]
    """Events in file order, with ``t`` in seconds since the first header's ``started_at``."""


def encode(line: Line) -> bytes:
    """Return ``line`` as one JSON line, newline included."""
    return _encoder.encode(line) + b"\n"


def write(path: Path, header: Header, events: Iterable[Event]) -> None:
    """Write a new recording to ``path``, replacing any file there."""
    with path.open("wb") as out:
        out.write(encode(header))
        for event in events:
            out.write(encode(event))


def read(path: Path) -> Recording:
    """Read the recording at ``path``; raises ``RecordingError`` naming the first bad line."""
    header: Header | None = None
    events: list[Event] = []
    for number, item in _lines(path):
        if isinstance(item, Header):
            if item.version != VERSION:
                msg = f"{path}:{number}: recording version {item.version} is not supported; this lobbyd reads {VERSION}"
                raise RecordingError(msg)
            header = header or item
        elif header is None:
            msg = f"{path}:{number}: expected the {FORMAT} header before the first event"
            raise RecordingError(msg)
        else:
            events.append(item)
    if header is None:
        msg = f"{path}: the file is empty; a recording starts with a {FORMAT} header line"
        raise RecordingError(msg)
    return Recording(header, _relative(events, header.started_at))


def _lines(path: Path) -> Iterator[tuple[int, Line]]:
    first = True
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            if not raw.strip():
                continue
            try:
                yield number, _decoder.decode(raw)
            except msgspec.ValidationError as exc:
                # A bad first line is most often an event where the header belongs.
                hint = f"; a recording starts with a {FORMAT} header line" if first else ""
                msg = f"{path}:{number}: invalid event: {exc}{hint}"
                raise RecordingError(msg) from None
            except msgspec.DecodeError:
                msg = f"{path}:{number}: not a JSON object; a recording holds one JSON object per line"
                raise RecordingError(msg) from None
            first = False


def _relative(events: list[Event], started_at: float) -> list[Event]:
    """Shift times to seconds since ``started_at``; a daemon's times are seconds since the epoch.

    An event stamped before ``started_at``, which only a clock step backwards makes,
    is moved to 0.
    """
    if started_at == 0:
        return events
    return [msgspec.structs.replace(event, t=round(max(event.t - started_at, 0.0), 6)) for event in events]
