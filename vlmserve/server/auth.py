"""API keys: `Authorization: Bearer <key>` on every route but /health (and the OpenAPI docs).

Keys are compared in constant time. Metrics and logs see a key only as `key_label` (a sha256 prefix), never
the key itself.
"""

import hashlib
import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vlmserve.server.errors import APIError

ANONYMOUS = "anonymous"
BATCH_OWNER = "vlmserve.batch_owner"  # ASGI scope key: a batch line's owner (asgi_call), never set over HTTP
_bearer = HTTPBearer(auto_error=False, description="one of the keys given with --api-key or VLMSERVE_API_KEY")


def key_label(key: str) -> str:
    """A stable, non-reversible name for a key: 'sha256:' and the first 12 hex digits of its hash."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


async def authenticate(request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    """The caller's key label (ANONYMOUS when the server has no keys; a batch line: its batch's owner); 401
    without a valid key."""
    if BATCH_OWNER in request.scope:
        return request.scope[BATCH_OWNER]
    keys: tuple[str, ...] = request.app.state.client.config.api_keys
    if not keys:
        return ANONYMOUS
    given = credentials.credentials.encode() if credentials else b""
    if not any(hmac.compare_digest(given, key.encode()) for key in keys):
        raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    return key_label(given.decode())
