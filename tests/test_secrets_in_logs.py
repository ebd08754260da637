"""No token and no auth secret reaches the log, stderr or a reply, whatever the client sends."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from lobbyd.auth import AuthSettings, mint
from lobbyd.client import ClientError, LobbyClient
from tests.daemon import running_daemon

pytestmark = pytest.mark.slow

SECRET = f"lobbyd-test-secret-{secrets.token_hex(16)}"
OTHER_SECRET = f"another-test-secret-{secrets.token_hex(16)}"


def signed(secret: str = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "aud": "lobbyd", "iat": now, "exp": now + 60}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm=algorithm)


def rejected_tokens() -> dict[str, str]:
    """Return tokens the daemon must reject, by what is wrong with them."""
    valid = signed()
    header, payload, signature = valid.split(".")
    return {
        "expired": signed(exp=int(time.time()) - 600),
        "other_secret": signed(OTHER_SECRET),
        "other_player": signed(sub="mallory"),
        "other_audience": signed(aud="game-servers"),
        "no_expiry": signed(exp=None),
        "alg_none": jwt.encode({"sub": "alice", "aud": "lobbyd", "exp": int(time.time()) + 60}, None, algorithm="none"),
        "tampered_payload": f"{header}.{payload[:-2]}xy.{signature}",
        "truncated": valid[: len(valid) - 10],
        "garbage": f"not-a-jwt-{secrets.token_hex(12)}",
    }


def pieces(token: str) -> list[str]:
    """Return the token and each part long enough to identify it."""
    return [token, *(part for part in token.split(".") if len(part) >= 16)]


async def hello_reply(address: str, player: str, token: str, *, json_lines: bool) -> tuple[dict[str, Any], bytes]:
    client = await LobbyClient.connect(address, json_lines=json_lines)
    try:
        await client.request("hello", v=1, player=player, token=token)
        reply = await client.recv()
        received: list[dict[str, Any]] = [reply]
        if reply["type"] == "welcome":
            # Past login: a second hello, a ping and a join_queue, each carrying the token.
            await client.request("hello", v=1, player=player, token=token)
            received.append(await client.recv())
            await client.request("ping", token=token)
            received.append(await client.recv())
            await client.request("join_queue", queue="1v1", token=token)
            received.append(await client.recv())
        elif reply["code"] == "invalid_token":
            with pytest.raises(ClientError):
                await client.recv(timeout=5)
        return reply, repr(received).encode()
    finally:
        await client.close()


async def test_tokens_and_secret_never_logged(tmp_path: Path) -> None:
    env = {"LOBBYD_AUTH_SECRET": SECRET, "LOBBYD_LOG_LEVEL": "debug", "LOBBYD_LOG_FORMAT": "json"}
    valid = {player: mint(AuthSettings(secret=SECRET), player) for player in ("alice", "bob")}
    rejected = rejected_tokens()
    replies = b""

    with running_daemon(tmp_path / "data", env=env) as daemon:
        for json_lines in (False, True):
            for player, token in valid.items():
                reply, seen = await hello_reply(daemon.address, player, token, json_lines=json_lines)
                assert reply["type"] == "welcome", reply
                replies += seen
            for flaw, token in rejected.items():
                reply, seen = await hello_reply(daemon.address, "alice", token, json_lines=json_lines)
                assert reply["code"] == "invalid_token", (flaw, reply)
                replies += seen
        # A bad id beside a valid token fails validation before the token is read.
        reply, seen = await hello_reply(daemon.address, "bad id!", valid["alice"], json_lines=True)
        assert reply["code"] == "invalid_field", reply
        replies += seen

    assert daemon.exit_code == 0
    log = daemon.log_path.read_text()
    stderr = daemon.stderr_path.read_text()
    assert "token_rejected" in log
    assert "session_opened" in log
    for where, text in (("log", log), ("stderr", stderr), ("replies", replies.decode())):
        assert SECRET not in text, where
        assert OTHER_SECRET not in text, where
        for token in [*valid.values(), *rejected.values()]:
            for piece in pieces(token):
                assert piece not in text, (where, piece)
