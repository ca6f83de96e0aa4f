"""One client per (base URL, key, options) per process, so every call reuses its connection pool.

Async clients are also keyed by event loop: an httpx.AsyncClient's pooled
connections belong to the loop that opened them.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import weakref
from typing import Any

from pydantic import SecretStr

from ._client import AsyncIG1Client, IG1Client

__all__ = ["shared_async_client", "shared_client"]

_lock = threading.Lock()
_sync_clients: dict[tuple[Any, ...], IG1Client] = {}
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, ...], AsyncIG1Client]
] = weakref.WeakKeyDictionary()


def _identity(api_key: SecretStr, options: dict[str, Any]) -> tuple[Any, ...]:
    # The key's digest, not the key, so the cache itself holds no second copy.
    digest = hashlib.sha256(api_key.get_secret_value().encode()).hexdigest()
    return (digest, *sorted(options.items()))


def shared_client(*, api_key: SecretStr, **options: Any) -> IG1Client:
    """The process-wide sync client for these settings (created on first use)."""
    key = _identity(api_key, options)
    with _lock:
        client = _sync_clients.get(key)
        if client is None:
            client = _sync_clients[key] = IG1Client(api_key=api_key, **options)
        return client


def shared_async_client(*, api_key: SecretStr, **options: Any) -> AsyncIG1Client:
    """The async client for these settings on the running event loop."""
    loop = asyncio.get_running_loop()
    key = _identity(api_key, options)
    with _lock:
        per_loop = _async_clients.setdefault(loop, {})
        client = per_loop.get(key)
        if client is None:
            client = per_loop[key] = AsyncIG1Client(api_key=api_key, **options)
        return client
