"""Per-image S3 calls through obstore (Rust ``object_store``) where it is exact, else boto3.

Why: botocore spends ~4 ms of CPU per image under the GIL (signing, XML, its HTTP
stack), ~44 % of the flow process; obstore does the same GET, HEAD and PUT outside
the GIL for a fraction of that. Why the fallbacks: ``object_store`` reads each key as
a ``Path``: it refuses keys with an empty, ``.`` or ``..`` segment or a control
character, and strips one leading and trailing ``/``. So obstore serves only keys
that ``plain_key`` accepts (those round-trip exactly, ``%``, ``+``, spaces and
unicode included: tested against moto), and only clients that ``s3_client`` made,
whose boto3 session is known. Everything else goes through boto3 as before.

Errors stay boto3's: the callers (``flows.storage``) redo an operation with boto3
on any obstore failure, so a missing key or bucket, denied access or S3 being down
surface as today's ``ClientError``/``BotoCoreError``. The one exception is HEAD's
404, which boto3 reports as ``False`` too. The store takes its credentials from the
boto3 session (``Boto3CredentialProvider``, refreshed as boto3 refreshes them), so no
secret sits in its configuration, repr or errors. What a caller cannot see any more:
botocore's event hooks on the client fire only for the calls boto3 still makes.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

try:
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store
except ImportError:  # obstore needs Python 3.11 (pyproject installs it there): boto3 only
    HAVE_OBSTORE = False
else:
    HAVE_OBSTORE = True

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_s3 import S3Client
    from obstore.store import ClientConfig, S3Config

__all__ = ["plain_key", "register_session", "store_for"]

MAX_STORES_PER_CLIENT = 16  # buckets; S3Store is bound to one
_OBSTORE_RETRIES = 2  # short: on lasting trouble boto3 redoes the call, with its own retries
_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")


def plain_key(key: str) -> bool:
    """Whether ``object_store`` sends ``key`` as itself (its ``Path::parse`` rules): no
    leading or trailing ``/``, no empty, ``.`` or ``..`` segment, no control character."""
    return bool(key) and all(
        segment not in ("", ".", "..")
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in segment)
        for segment in key.split("/"))


def register_session(client: S3Client, session: Callable[[], boto3.session.Session], *,
                     verify: bool | str | None = None) -> None:
    """Let ``client`` do per-image calls through obstore with the credentials of the session
    it was made from (``s3_client`` calls this). ``verify`` is the client's: False, or a CA
    bundle's path (else ``AWS_CA_BUNDLE``). A client whose settings obstore cannot
    reproduce (proxies, no TLS check, no credentials) keeps boto3 for everything."""
    with _lock:
        if client in _stores:
            return
        _stores[client] = (None if verify is False or not HAVE_OBSTORE
                           else _Stores.for_client(client, session(), verify))


def store_for(client: S3Client, bucket: str, key: str) -> S3Store | None:
    """The obstore store to use for ``key``, or None: boto3 then does the call."""
    if not plain_key(key):
        return None
    with _lock:
        stores = _stores.get(client)
    return None if stores is None else stores.store(bucket)


class _Stores:
    """A client's obstore side: its endpoint, region and credential provider, and one
    ``S3Store`` per bucket (least recently used first out)."""

    def __init__(self, options: S3Config, client_options: ClientConfig,
                 provider: Any) -> None:
        self._options = options  # endpoint, region, path style: no credentials
        self._client_options = client_options
        self._provider = provider
        self._stores: OrderedDict[str, S3Store] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"_Stores(endpoint={self._options.get('endpoint')!r})"

    @classmethod
    def for_client(cls, client: S3Client, session: boto3.session.Session,
                   verify: bool | str | None) -> _Stores | None:
        config: Any = client.meta.config  # botocore's Config: attributes set at run time
        if config.proxies or client.meta.partition != "aws":
            return None
        try:
            provider = Boto3CredentialProvider(session)
        except ValueError:  # no credentials: boto3 fails (or signs anonymously) as before
            return None
        # Generous: a slow 50 MB download must not time out here and be fetched twice.
        client_options: ClientConfig = {
            "connect_timeout": timedelta(seconds=float(config.connect_timeout)),
            "timeout": timedelta(seconds=4 * float(config.read_timeout))}
        ca_bundle = verify if isinstance(verify, str) else os.environ.get("AWS_CA_BUNDLE")
        if ca_bundle:  # added to the system's roots (boto3 trusts only the bundle)
            try:
                with open(ca_bundle, "rb") as pem:
                    client_options["root_certificate"] = pem.read()
            except OSError:
                return None
        options: S3Config = {"region": client.meta.region_name or "us-east-1"}
        endpoint = client.meta.endpoint_url
        host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        if not host.endswith(_AWS_HOSTS) or endpoint.startswith("http://"):  # moto, MinIO...
            virtual = (config.s3 or {}).get("addressing_style") == "virtual"
            options["endpoint"] = endpoint
            options["virtual_hosted_style_request"] = virtual
            client_options["allow_http"] = endpoint.startswith("http://")
        return cls(options, client_options, provider)

    def store(self, bucket: str) -> S3Store:
        with self._lock:
            store = self._stores.get(bucket)
            if store is not None:
                self._stores.move_to_end(bucket)
                return store
            store = S3Store(bucket, config=self._options, client_options=self._client_options,
                            retry_config={"max_retries": _OBSTORE_RETRIES,
                                          "retry_timeout": timedelta(seconds=30)},
                            credential_provider=self._provider)
            self._stores[bucket] = store
            while len(self._stores) > MAX_STORES_PER_CLIENT:
                self._stores.popitem(last=False)
            return store


# Weakly keyed: a client's stores live as long as the client (the client caches bound both).
_stores: weakref.WeakKeyDictionary[Any, _Stores | None] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
