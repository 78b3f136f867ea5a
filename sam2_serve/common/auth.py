"""Optional API-key authentication of the HTTP API: ``Authorization: Bearer <key>``.

Keys come from an environment variable (comma-separated) and/or a file (one per line, ``#`` comments), read once
when the ingress replica starts, so a Kubernetes Secret can be mounted either way. Several keys may be valid at
once (rotation: add the new key, move clients, remove the old one). Only SHA-256 digests of the keys are kept,
and a presented key is compared with every one of them with ``hmac.compare_digest``: the time taken does not
depend on how much of a key matched, nor on which key matched.

Misconfiguration fails closed: a configured key file that is missing or empty, a key shorter than
``MIN_KEY_LENGTH``, or ``required`` with no key at all stops the replica from starting with a message that says
what to fix, rather than serving without authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from sam2_serve.common.errors import Unauthorized

MIN_KEY_LENGTH = 16
DEFAULT_KEY_ENV = "SAM2_SERVE_API_KEY"


class AuthConfig(BaseModel):
    """Where the ingress finds its API keys (``auth:`` in the application's args)."""

    model_config = ConfigDict(extra="forbid")

    api_key_env: Optional[str] = Field(
        DEFAULT_KEY_ENV, description="Environment variable (of the ingress replicas) holding the key(s), "
        "comma-separated. Authentication is on when it or api_key_file yields a key.")
    api_key_file: Optional[str] = Field(
        None, description="File holding the key(s), one per line (e.g. a mounted Kubernetes Secret). A configured "
        "file that is missing or holds no key stops the replica from starting.")
    required: bool = Field(False, description="Refuse to start without any key (set in production: a missing "
                           "secret then fails the deployment instead of opening the API).")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The accepted keys (as digests); ``enabled`` is False when none is configured (open API)."""

    def __init__(self, keys: list[str]):
        for key in keys:
            if len(key) < MIN_KEY_LENGTH:
                raise ValueError(f"an API key is {len(key)} characters long; use at least {MIN_KEY_LENGTH} "
                                 "(e.g. `openssl rand -hex 32`)")
        self._digests = tuple(_digest(k) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def load(cls, config: AuthConfig | Mapping | None = None, environ: Mapping[str, str] | None = None) -> "ApiKeys":
        """Read the keys ``config`` points at; raises ``ValueError`` (with the remedy) on a misconfiguration."""
        cfg = config if isinstance(config, AuthConfig) else AuthConfig.model_validate(config or {})
        env = os.environ if environ is None else environ
        keys: list[str] = []
        if cfg.api_key_env:
            keys += [k.strip() for k in env.get(cfg.api_key_env, "").split(",") if k.strip()]
        if cfg.api_key_file:
            path = Path(cfg.api_key_file).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"auth.api_key_file {str(path)!r} cannot be read ({type(exc).__name__}); "
                                 "mount the key file there or remove the setting") from None
            from_file = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            if not from_file:
                raise ValueError(f"auth.api_key_file {str(path)!r} holds no key (one key per line)")
            keys += from_file
        if cfg.required and not keys:
            raise ValueError(f"auth.required is set but no API key was found (environment variable "
                             f"{cfg.api_key_env or '(none)'}, file {cfg.api_key_file or '(none)'})")
        return cls(keys)

    def check(self, authorization: Optional[str]) -> None:
        """Accept the ``Authorization`` header value or raise ``Unauthorized`` (401). No-op when disabled."""
        if not self._digests:
            return
        if not authorization:
            raise Unauthorized("this API needs a key: send the header 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
        presented = _digest(token)
        ok = False
        for digest in self._digests:  # no early exit: every key is compared, whichever matches
            ok |= hmac.compare_digest(presented, digest)
        if not ok:
            raise Unauthorized("the API key is not valid")
