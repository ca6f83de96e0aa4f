"""The IG1 credentials block: the secret key, where to send it, and how patiently."""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from prefect_ig1.client import (
    DEFAULT_BASE_URL,
    AccountUsage,
    AsyncIG1Client,
    IG1Client,
    IG1Error,
    shared_async_client,
    shared_client,
)

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "IG1Credentials"]

API_KEY_ENV = "IG1AI_API_KEY"
BASE_URL_ENV = "IG1AI_BASE_URL"


def _check_base_url(url: str) -> str:
    """The URL if the key may travel to it: https://, or http:// to this machine only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"base_url is not a URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("base_url must be an https:// URL with a host, e.g. "
                         "https://api.ig1.ai/v1")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(
            f"base_url uses plain http:// to {host!r}: the API key would travel in clear; "
            "use https:// (http:// is accepted only for 127.0.0.0/8, ::1 and localhost)")
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":  # urlsplit lowercases the host and drops IPv6 brackets
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: DNS could send it anywhere
        return False


class IG1Credentials(Block):
    """Credentials for IG1 AI; hands out one pooled client per process.

    Example:
        Load saved credentials and call IG1 with the pooled client:
        ```python
        from prefect_ig1.blocks import IG1Credentials
        credentials = IG1Credentials.load("BLOCK_NAME")
        print(credentials.usage().remaining)
        ```
    """

    _block_type_name = "IG1 Credentials"
    _block_type_slug = "ig1-credentials"
    _description = "API key and endpoint for IG1 AI's OpenAI-compatible Responses API."
    # a base_url set after creation is checked too: the key must never leave in clear
    model_config = ConfigDict(validate_assignment=True)

    api_key: SecretStr = Field(
        default=...,
        description="IG1 API key (sent as a bearer token; never logged or shown).",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="API base URL including /v1; /usage is read from the same host's root.",
    )
    timeout: float = Field(
        default=120.0, gt=0,
        description="Seconds to wait for one HTTP reply (image descriptions can be slow).",
    )
    max_retries: int = Field(
        default=2, ge=0,
        description="Quick client-side retries of transient failures (429, 5xx, drops).",
    )
    max_connections: int = Field(
        default=64, ge=1,
        description="Size of the per-process HTTP connection pool.",
    )

    @field_validator("base_url")
    @classmethod
    def _refuse_plain_http(cls, value: str) -> str:
        return _check_base_url(value)

    @classmethod
    def from_env(cls) -> IG1Credentials:
        """Credentials from IG1AI_API_KEY and IG1AI_BASE_URL (used when no block is given)."""
        key = os.environ.get(API_KEY_ENV, "")
        if not key:
            raise IG1Error(
                f"no IG1 credentials: pass an IG1Credentials block (or its name), "
                f"or set {API_KEY_ENV} (and {BASE_URL_ENV} for another endpoint)"
            )
        base_url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        try:
            _check_base_url(base_url)
        except ValueError as exc:  # name the variable to fix, not a pydantic field
            raise IG1Error(f"{BASE_URL_ENV} is refused: {exc}") from None
        return cls(api_key=SecretStr(key), base_url=base_url)

    def _client_options(self) -> dict[str, object]:
        return {"base_url": self.base_url, "timeout": self.timeout,
                "max_retries": self.max_retries, "max_connections": self.max_connections}

    def get_client(self) -> IG1Client:
        """The process-wide sync client for these credentials."""
        return shared_client(api_key=self.api_key, **self._client_options())

    def get_async_client(self) -> AsyncIG1Client:
        """The async client for these credentials on the running event loop."""
        return shared_async_client(api_key=self.api_key, **self._client_options())

    def usage(self) -> AccountUsage:
        """``GET /usage``: spend this month, commit and max_throughput."""
        return self.get_client().usage()

    async def ausage(self) -> AccountUsage:
        """Async twin of ``usage()``."""
        return await self.get_async_client().usage()
