"""Access tokens for Key Vault / Managed HSM.

In order: the token the request carries; workload identity (``AZURE_CLIENT_ID``,
``AZURE_TENANT_ID``, ``AZURE_FEDERATED_TOKEN_FILE``, as injected by the AKS webhook); managed
identity through IMDS (optionally a user-assigned client id). Tokens come from azure-identity and
are cached per scope until shortly before they expire; concurrent callers share one fetch. The
scope is chosen from the vault host (``*.managedhsm.azure.net`` → Managed HSM, else Key Vault) so
the token can be fetched while the report and MAA steps run; Key Vault's own challenge may still
ask for another scope, which the same credential then serves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import AioHttpTransport

from skr.core.endpoints import Endpoint
from skr.core.jose import parse_compact, parse_json_object
from skr.errors import IdentityUnavailableError, VerificationError

__all__ = [
    "KEY_VAULT_SCOPE",
    "MANAGED_HSM_SCOPE",
    "AzureIdentity",
    "RequestTokenCredential",
    "scope_for",
]

_logger = logging.getLogger(__name__)

KEY_VAULT_SCOPE: Final = "https://vault.azure.net/.default"
MANAGED_HSM_SCOPE: Final = "https://managedhsm.azure.net/.default"
REFRESH_MARGIN_SECONDS: Final = 300
STATIC_TOKEN_DEFAULT_LIFETIME: Final = 300


def scope_for(vault: Endpoint, managed_hsm_hosts: frozenset[str] = frozenset()) -> str:
    """Managed HSM scope for ``*.managedhsm.azure.net`` (or configured hosts), else Key Vault."""
    if vault.is_managed_hsm or vault.netloc in managed_hsm_hosts:
        return MANAGED_HSM_SCOPE
    return KEY_VAULT_SCOPE


class _AsyncCredential(Protocol):
    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken: ...

    async def close(self) -> None: ...


class _CachingCredential:
    """An async token credential that caches per (scope, tenant, claims) and shares in-flight fetches.

    It implements both ``get_token`` and ``get_token_info`` so azure-keyvault-keys' challenge policy
    can use it directly.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str | None, str | None], AccessTokenInfo] = {}
        self._flights: dict[tuple[str, str | None, str | None], asyncio.Future[AccessTokenInfo]] = {}

    async def _fetch(self, scope: str, *, tenant_id: str | None, claims: str | None) -> AccessTokenInfo:
        raise NotImplementedError

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        if len(scopes) != 1:
            raise ValueError("exactly one scope is supported")
        opts = options or {}
        # Keyed by scope and claims only: the prefetch (no tenant) and the SDK's challenge-driven
        # call (with the vault's tenant) must share one token; a single-tenant credential returns
        # the same token for both, or fails if the tenant is not its own.
        key = (scopes[0], None, opts.get("claims"))
        cached = self._cache.get(key)
        if cached is not None and cached.expires_on - REFRESH_MARGIN_SECONDS > time.time():
            return cached
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch(scopes[0], tenant_id=opts.get("tenant_id"), claims=key[2]))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._settle(key, done))
        token = await asyncio.shield(flight)
        self._cache[key] = token
        return token

    def invalidate(self) -> None:
        """Forget cached tokens (the vault refused one); the next call fetches afresh."""
        self._cache.clear()

    def _settle(self, key: tuple[str, str | None, str | None], done: asyncio.Future[AccessTokenInfo]) -> None:
        self._flights.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a prefetch whose waiter gave up must not log "never retrieved"

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        options: TokenRequestOptions = {"enable_cae": enable_cae}
        if claims:
            options["claims"] = claims
        if tenant_id:
            options["tenant_id"] = tenant_id
        info = await self.get_token_info(*scopes, options=options)
        return AccessToken(info.token, info.expires_on)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> _CachingCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()


class RequestTokenCredential(_CachingCredential):
    """The access token a request carried; used as is, for any scope the vault asks for."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.__token = token
        self._expires_on = _jwt_expiry(token)

    async def _fetch(self, scope: str, *, tenant_id: str | None, claims: str | None) -> AccessTokenInfo:
        return AccessTokenInfo(self.__token, self._expires_on)

    def __repr__(self) -> str:
        return "RequestTokenCredential(<redacted>)"


def _jwt_expiry(token: str) -> int:
    """``exp`` of a JWT without verifying it (the vault verifies); a default lifetime otherwise."""
    try:
        claims = parse_json_object(
            parse_compact(token, max_bytes=16 * 1024, what="access token").payload, what="claims"
        )
        exp = claims.get("exp")
        if isinstance(exp, int) and not isinstance(exp, bool):
            return exp
    except VerificationError:  # an opaque token is legal; the vault is the judge
        _logger.debug("request access token is not a JWT; assuming a short lifetime")
    return int(time.time()) + STATIC_TOKEN_DEFAULT_LIFETIME


class AzureIdentity(_CachingCredential):
    """Workload identity when its three variables are set, else managed identity (IMDS)."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str],
        transport: AioHttpTransport,
        managed_identity_client_id: str | None = None,
        authority_host: str | None = None,
        connection_verify: str | None = None,
    ) -> None:
        super().__init__()
        self.kind = "workload identity" if _workload_identity_configured(environ) else "managed identity"
        self._environ = environ
        self._transport = transport
        self._mi_client_id = managed_identity_client_id or None
        self._authority_host = authority_host or environ.get("AZURE_AUTHORITY_HOST") or None
        self._verify = connection_verify
        self._inner: _AsyncCredential | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self._build_lock = threading.Lock()

    def _credential(self) -> _AsyncCredential:
        with self._build_lock:  # preload builds it in a worker thread; a request may race it
            return self._build_credential()

    def _build_credential(self) -> _AsyncCredential:
        if self._inner is None:
            from azure.identity.aio import (  # noqa: PLC0415 - imported on first use; heavy module
                ManagedIdentityCredential,
                WorkloadIdentityCredential,
            )

            common: dict[str, Any] = {"transport": self._transport}
            if self._verify:
                common["connection_verify"] = self._verify
            if self.kind == "workload identity":
                self._inner = WorkloadIdentityCredential(
                    tenant_id=self._environ["AZURE_TENANT_ID"],
                    client_id=self._environ["AZURE_CLIENT_ID"],
                    token_file_path=self._environ["AZURE_FEDERATED_TOKEN_FILE"],
                    authority=self._authority_host,
                    **common,
                )
            else:
                self._inner = ManagedIdentityCredential(client_id=self._mi_client_id, **common)
        return self._inner

    def preload(self) -> None:
        """Build the azure-identity credential now (blocking imports; call from a worker thread)."""
        self._credential()

    async def _fetch(self, scope: str, *, tenant_id: str | None, claims: str | None) -> AccessTokenInfo:
        try:
            token = await self._credential().get_token(scope, claims=claims, tenant_id=tenant_id, enable_cae=True)
        except ClientAuthenticationError as exc:
            raise IdentityUnavailableError(
                f"no access token from {self.kind}: {_first_line(exc)}. "
                "Pass access_token in the request, configure workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
                "AZURE_FEDERATED_TOKEN_FILE) or assign a managed identity.",
                service="identity",
            ) from None
        except Exception as exc:  # azure-identity raises many transport types; all mean "no token"
            raise IdentityUnavailableError(
                f"no access token from {self.kind}: {type(exc).__name__}", service="identity"
            ) from None
        return AccessTokenInfo(token.token, token.expires_on)

    def invalidate(self) -> None:
        """Forget every cached token, azure-identity's own cache included (a fresh credential)."""
        super().invalidate()
        stale, self._inner = self._inner, None
        if stale is not None:
            closing = asyncio.ensure_future(stale.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def __repr__(self) -> str:
        return f"AzureIdentity(kind={self.kind!r})"


def _workload_identity_configured(environ: Mapping[str, str]) -> bool:
    return all(environ.get(name) for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"))


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or exc).splitlines()
    line = text[0] if text else type(exc).__name__
    return "".join(c for c in line if c.isprintable())[:200]
