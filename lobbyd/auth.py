"""Player authentication with JWTs signed by the studio's account backend.

A token is checked with PyJWT against one key: an HS256 shared secret, or a PEM
public key (Ed25519 for EdDSA, P-256 for ES256) so that the lobby host never holds
a signing key. ``sub`` is the player id; ``exp`` and ``aud`` are required, ``nbf``
is checked when present and ``iss`` when configured. The ``alg`` of a token must
be the one the key implies, so ``none`` and algorithm confusion are rejected.

With no key configured the verifier is in development mode and accepts any player
id without a token. Error messages name the failed check, never the token.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from lobbyd.errors import ConfigError, InvalidToken, lowercase_start
from lobbyd.protocol.messages import ID_PATTERN, MAX_ID_LENGTH

DEFAULT_TTL_S: Final = 3600

# RFC 7518 section 3.2 asks for an HS256 key at least as long as the hash: 32 bytes.
MIN_SECRET_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class AuthSettings:
    secret: str | None = None
    secret_file: str | None = None
    public_key_file: str | None = None
    issuer: str | None = None
    audience: str = "lobbyd"
    leeway_s: int = 30
    required: bool = False


class TokenVerifier:
    """Check player tokens against the configured key, or accept anyone in development mode."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._key, self.algorithm = _load_key(settings)
        if self._key is None and settings.required:
            msg = "auth_required: no key is set; set auth_secret_file, auth_secret or auth_public_key_file"
            raise ConfigError(msg)

    @property
    def dev_mode(self) -> bool:
        """True when no key is configured and any player id is accepted."""
        return self._key is None

    def verify(self, token: str | None, player: str) -> str:
        """Return the player id the token proves; raise ``InvalidToken`` when it does not.

        ``player`` is the id the client claims in ``hello``; with a key configured it
        must equal the token's ``sub``.
        """
        if self._key is None:
            return player
        if not token:
            msg = "hello carries no token: this server requires a signed player token"
            raise InvalidToken(msg)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            msg = "token has expired: get a new token from the account service"
            raise InvalidToken(msg) from None
        except jwt.ImmatureSignatureError:
            msg = "token is not valid yet (nbf is in the future): check the clock of the account service"
            raise InvalidToken(msg) from None
        except jwt.InvalidAudienceError:
            msg = f"token audience is wrong: this server accepts aud {self.settings.audience!r}"
            raise InvalidToken(msg) from None
        except jwt.InvalidIssuerError:
            msg = f"token issuer is wrong: this server accepts iss {self.settings.issuer!r}"
            raise InvalidToken(msg) from None
        except jwt.MissingRequiredClaimError as exc:
            msg = f"token lacks the required claim {exc.claim!r}"
            raise InvalidToken(msg) from None
        except jwt.InvalidAlgorithmError:
            msg = f"token algorithm is not accepted: this server accepts only {self.algorithm}"
            raise InvalidToken(msg) from None
        except jwt.InvalidSignatureError:
            msg = "token signature does not verify with this server's key"
            raise InvalidToken(msg) from None
        except jwt.PyJWTError as exc:
            # PyJWT's messages name the broken part ("Not enough segments"), never its content.
            msg = f"token is malformed: {lowercase_start(str(exc)) or 'it cannot be decoded'}"
            raise InvalidToken(msg) from None

        subject = claims["sub"]
        if subject != player:
            msg = "token is for another player than the one hello names"
            raise InvalidToken(msg)
        return player


def mint(settings: AuthSettings, player: str, ttl_s: int = DEFAULT_TTL_S, private_key_file: str | None = None) -> str:
    """Return a signed token for ``player``: the HS256 secret, or ``private_key_file``."""
    if not re.fullmatch(ID_PATTERN, player) or len(player) > MAX_ID_LENGTH:
        msg = f"player id {player!r} is invalid: use 1 to {MAX_ID_LENGTH} of A-Z a-z 0-9 _ . -"
        raise ConfigError(msg)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": player, "aud": settings.audience, "iat": now, "exp": now + ttl_s}
    if settings.issuer:
        claims["iss"] = settings.issuer
    if private_key_file is not None:
        key = _read(private_key_file, "--private-key")
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            msg = f"--private-key: {private_key_file} is not an unencrypted PEM private key: {exc}"
            raise ConfigError(msg) from None
        algorithm = _algorithm_of(private, "--private-key")
        return jwt.encode(claims, private, algorithm=algorithm)  # type: ignore[arg-type]
    secret = _secret(settings)
    if secret is None:
        msg = "cannot mint a token: set auth_secret or auth_secret_file, or pass --private-key FILE"
        raise ConfigError(msg)
    return jwt.encode(claims, secret, algorithm="HS256")


def _load_key(settings: AuthSettings) -> tuple[Any, str]:
    secret = _secret(settings)
    if secret is not None and settings.public_key_file:
        msg = "auth_public_key_file: set either it or a shared secret (auth_secret, auth_secret_file), not both"
        raise ConfigError(msg)
    if secret is not None:
        return secret, "HS256"
    if settings.public_key_file:
        pem = _read(settings.public_key_file, "auth_public_key_file")
        try:
            public = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            msg = f"auth_public_key_file: {settings.public_key_file} is not a PEM public key: {exc}"
            raise ConfigError(msg) from None
        return public, _algorithm_of(public, "auth_public_key_file")
    return None, ""


def _secret(settings: AuthSettings) -> str | None:
    secret = settings.secret or None
    key = "auth_secret"
    if settings.secret_file:
        key = "auth_secret_file"
        secret = _read(settings.secret_file, key).decode().strip()
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        length = len(secret.encode())
        msg = f"{key}: the secret is {length} bytes long; use at least {MIN_SECRET_BYTES} random bytes"
        raise ConfigError(msg)
    return secret


def _algorithm_of(key: object, setting: str) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return "ES256"
    msg = f"{setting}: unsupported key type {type(key).__name__}: use Ed25519 (EdDSA) or P-256 (ES256)"
    raise ConfigError(msg)


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        msg = f"{setting}: cannot read {path}: {exc.strerror}"
        raise ConfigError(msg) from None
