"""Player tokens: the verifier on its own, then hello over a real socket."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from lobbyd.auth import AuthSettings, TokenVerifier, mint
from lobbyd.client import ClientError, LobbyClient
from lobbyd.errors import ConfigError, InvalidToken
from tests.conftest import ServerFactory

SECRET = "0123456789abcdef0123456789abcdef-test-only"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "aud": "lobbyd", "iat": now, "exp": now + 60}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(AuthSettings(secret=SECRET, leeway_s=0))


def rejection(verifier: TokenVerifier, token: str | None, player: str = "alice") -> str:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token, player)
    assert caught.value.fatal is True
    return caught.value.message


def test_valid_token_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify(hs256(), "alice") == "alice"
    assert verifier.dev_mode is False


def test_expired_token_rejected(verifier: TokenVerifier) -> None:
    assert "expired" in rejection(verifier, hs256(exp=int(time.time()) - 5))


def test_future_nbf_rejected(verifier: TokenVerifier) -> None:
    assert "not valid yet" in rejection(verifier, hs256(nbf=int(time.time()) + 300))


def test_wrong_signature_rejected(verifier: TokenVerifier) -> None:
    forged = jwt.encode(claims(), "another-secret-that-is-long-enough-xx", algorithm="HS256")
    assert "signature" in rejection(verifier, forged)


def test_wrong_audience_rejected(verifier: TokenVerifier) -> None:
    assert "audience" in rejection(verifier, hs256(aud="game-servers"))


def test_missing_expiry_rejected(verifier: TokenVerifier) -> None:
    assert "'exp'" in rejection(verifier, hs256(exp=None))


def test_other_player_rejected(verifier: TokenVerifier) -> None:
    assert "another player" in rejection(verifier, hs256(sub="mallory"))


def test_alg_none_rejected(verifier: TokenVerifier) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert "algorithm" in rejection(verifier, unsigned)


def test_missing_token_rejected(verifier: TokenVerifier) -> None:
    assert "no token" in rejection(verifier, None)


def test_garbage_token_rejected(verifier: TokenVerifier) -> None:
    assert "malformed" in rejection(verifier, "not.a.jwt")


@pytest.mark.parametrize("token", ["not.a.jwt", "nodots", "a.b", "\u00ff.\u00fe.x"])
def test_malformed_token_message_plain(verifier: TokenVerifier, token: str) -> None:
    message = rejection(verifier, token)

    assert message.startswith("token is malformed: ")
    assert "Error" not in message


def test_issuer_checked_when_set() -> None:
    strict = TokenVerifier(AuthSettings(secret=SECRET, issuer="accounts.example"))
    assert strict.verify(hs256(iss="accounts.example"), "alice") == "alice"
    assert "issuer" in rejection(strict, hs256(iss="elsewhere"))


def test_rejection_never_echoes_token(verifier: TokenVerifier) -> None:
    token = hs256(aud="nope")
    assert token not in rejection(verifier, token)


@pytest.mark.parametrize("curve", ["ed25519", "p256"])
def test_public_key_verifies(tmp_path: Path, curve: str) -> None:
    private: Any = ec.generate_private_key(ec.SECP256R1())
    if curve == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    private_file = tmp_path / "private.pem"
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_file.write_bytes(pem)
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    settings = AuthSettings(public_key_file=str(public_file))
    verifier = TokenVerifier(settings)
    token = mint(settings, "alice", 60, private_key_file=str(private_file))
    assert verifier.verify(token, "alice") == "alice"
    assert verifier.algorithm == ("EdDSA" if curve == "ed25519" else "ES256")
    # An HS256 token signed with the public key's bytes must not pass (algorithm confusion).
    confused = jwt.encode(claims(), "x" * 40, algorithm="HS256")
    assert "algorithm" in rejection(verifier, confused)


def test_short_secret_refused() -> None:
    with pytest.raises(ConfigError, match=r"^auth_secret: the secret is 5 bytes long; use at least 32"):
        TokenVerifier(AuthSettings(secret="short"))


def test_short_secret_file_named(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("short\n")

    with pytest.raises(ConfigError, match=r"^auth_secret_file: the secret is 5 bytes long"):
        TokenVerifier(AuthSettings(secret_file=str(secret_file)))


@pytest.mark.slow
@pytest.mark.parametrize("ttl", ["-5", "0", "soon"])
def test_token_command_rejects_bad_ttl(tmp_path: Path, ttl: str) -> None:
    config_file = tmp_path / "lobbyd.toml"
    config_file.write_text(f'auth_secret = "{SECRET}"\n')

    done = subprocess.run(
        [sys.executable, "-m", "lobbyd", "token", "--config", str(config_file), "--player", "p1", "--ttl", ttl],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert "--ttl" in done.stderr


def test_required_without_key_refused() -> None:
    with pytest.raises(ConfigError, match="auth_required"):
        TokenVerifier(AuthSettings(required=True))


def test_dev_mode_accepts_anyone() -> None:
    open_door = TokenVerifier(AuthSettings())
    assert open_door.dev_mode is True
    assert open_door.verify(None, "anyone") == "anyone"


# Over a socket.


async def test_hello_with_token_welcomed(start_server: ServerFactory) -> None:
    server = await start_server(auth_secret=SECRET)
    client = await LobbyClient.connect(server.address)
    await client.request("hello", v=1, player="alice", token=mint(AuthSettings(secret=SECRET), "alice"), rid=1)
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    assert "dev_mode" not in welcome
    await client.close()


@pytest.mark.parametrize("json_lines", [False, True], ids=["binary", "json"])
async def test_bad_token_closes(start_server: ServerFactory, json_lines: bool) -> None:
    server = await start_server(auth_secret=SECRET)
    bystander = await LobbyClient.connect(server.address)
    await bystander.request("hello", v=1, player="bob", token=mint(AuthSettings(secret=SECRET), "bob"))
    await bystander.recv_type("welcome")

    client = await LobbyClient.connect(server.address, json_lines=json_lines)
    await client.request("hello", v=1, player="alice", token=mint(AuthSettings(secret=SECRET), "mallory"), rid=9)
    error = await client.recv()
    assert error["code"] == "invalid_token"
    assert error["rid"] == 9
    with pytest.raises(ClientError):
        await client.recv(timeout=5)
    assert "alice" not in server.server.lobby.players

    rid = await bystander.request("ping")
    assert await bystander.recv() == {"type": "pong", "rid": rid}
    await client.close()
    await bystander.close()


async def test_dev_mode_in_welcome(start_server: ServerFactory) -> None:
    server = await start_server()
    client = await LobbyClient.connect(server.address)
    welcome = await client.hello("dev")
    assert welcome["dev_mode"] is True
    await client.close()
