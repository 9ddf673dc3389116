"""The release use case: report → collateral → MAA → Key Vault → unwrap, fast and shared.

Usable as a library without the HTTP server::

    releaser = KeyReleaser(platform=..., collateral=..., maa=..., vault=..., identity=..., allow=...)
    await releaser.start()                       # wrapping key generated in a worker thread
    jwk = await releaser.release(kid="mykey", akv="myvault.vault.azure.net",
                                 maa="sharedeus.eus.attest.azure.net")

Where the time goes, and how it is kept off the critical path:

* the RSA wrapping key is generated ahead of need in a worker thread, never on a request;
* the report + collateral step and the identity token are fetched concurrently; only
  report → MAA → Key Vault is sequential, because each needs the previous result;
* MAA tokens are cached per (MAA instance, wrapping key) until shortly before they expire, so a
  warm release is one Key Vault round trip; the key is rotated together with the token;
* identical concurrent requests share one flight (one MAA call, one Key Vault call);
* released keys may be cached in memory for a TTL (off by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from azure.core.credentials_async import AsyncTokenCredential

from skr.core.collateral import Collateral, CollateralResolver, SecurityContext
from skr.core.crypto import WrappingKey, generate_wrapping_key
from skr.core.endpoints import AllowList, Endpoint, EndpointKind
from skr.core.identity import RequestTokenCredential, scope_for
from skr.core.keyvault import DEFAULT_ENC, KeyName, ReleasedJwk, VaultClient
from skr.core.maa import MaaClient, MaaEvidence, MaaToken
from skr.errors import BadRequestError, IdentityUnavailableError, NotReadyError
from skr.snp.device import RawEvidence, ReportProvider

__all__ = ["AttestationEvidence", "KeyReleaser", "ReleaseOptions", "SingleFlight"]

_logger = logging.getLogger(__name__)

T = TypeVar("T")
RUNTIME_DATA_MAX: Final = 64 * 1024


class SingleFlight:
    """Concurrent callers with the same key share one execution and its result (or error)."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}

    def in_flight(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(work())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._forget(key, done))
        # shield: one caller giving up (client disconnect) must not cancel the others' flight.
        result: T = await asyncio.shield(flight)
        return result

    def _forget(self, key: Hashable, done: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # mark retrieved: the waiters have it


@dataclass(frozen=True, slots=True)
class ReleaseOptions:
    """Tunables of the release core (all have safe defaults)."""

    wrapping_key_bits: int = 2048
    token_refresh_margin: timedelta = timedelta(minutes=5)
    wrapping_key_max_age: timedelta = timedelta(hours=8)
    released_key_ttl: timedelta | None = None  # cache released keys in memory; off by default
    identity_timeout: float = 15.0  # seconds for the access token, fetched beside attestation
    vmpl: int = 0
    managed_hsm_hosts: frozenset[str] = field(default_factory=frozenset)
    # A long-running sidecar prepares the next wrapping key ahead of need; a one-shot run (``skr
    # release``) would generate one it never uses, on the CPU its first key is waiting for.
    prepare_successor: bool = True


@dataclass(frozen=True, slots=True)
class AttestationEvidence:
    """A report with its verified collateral and the runtime data bound into it."""

    raw: RawEvidence
    collateral: Collateral
    runtime_data: bytes


class _WrappingKeys:
    """The current wrapping key and the next one, generated in a worker thread ahead of need."""

    def __init__(self, bits: int, max_age: timedelta, *, prepare_successor: bool = True) -> None:
        self._bits = bits
        self._prepare_successor = prepare_successor
        self._max_age = max_age.total_seconds()
        self._current: tuple[float, WrappingKey] | None = None
        self._next: asyncio.Task[WrappingKey] | None = None

    def start(self) -> None:
        if self._next is None and self._current is None:
            self._next = asyncio.ensure_future(asyncio.to_thread(generate_wrapping_key, self._bits))

    @property
    def ready(self) -> bool:
        return self._current is not None or (self._next is not None and self._next.done())

    async def current(self) -> WrappingKey:
        if self._current is not None and time.monotonic() - self._current[0] < self._max_age:
            return self._current[1]
        if self._next is None:
            self.start()
        assert self._next is not None
        key = await asyncio.shield(self._next)
        if self._current is None or self._current[1] is not key:
            self._current = (time.monotonic(), key)
        # Prepare the successor now so rotation never generates on a request path.
        self._next = (
            asyncio.ensure_future(asyncio.to_thread(generate_wrapping_key, self._bits))
            if self._prepare_successor
            else None
        )
        return key

    async def close(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.cancel()


class KeyReleaser:
    """Attests and releases keys; see the module docstring for the flow."""

    def __init__(
        self,
        *,
        platform: ReportProvider,
        collateral: CollateralResolver,
        maa: MaaClient,
        vault: VaultClient,
        identity: AsyncTokenCredential | None,
        allow: AllowList,
        clock: Callable[[], datetime],
        options: ReleaseOptions | None = None,
        security_context: SecurityContext | None = None,
        default_maa: str | None = None,
        default_akv: str | None = None,
    ) -> None:
        self.options = options or ReleaseOptions()
        self._platform = platform
        self._collateral = collateral
        self._maa = maa
        self._vault = vault
        self._identity = identity
        self._allow = allow
        self._clock = clock
        self._context = security_context
        self._default_maa = default_maa
        self._default_akv = default_akv
        self._keys = _WrappingKeys(
            self.options.wrapping_key_bits,
            self.options.wrapping_key_max_age,
            prepare_successor=self.options.prepare_successor,
        )
        self._tokens: dict[tuple[str, str], MaaToken] = {}
        self._evidence: dict[str, AttestationEvidence] = {}
        self._released: dict[Hashable, tuple[float, ReleasedJwk]] = {}
        self._flights = SingleFlight()
        self._platform_lock = asyncio.Lock()
        self.collateral_ready = False

    # --- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin generating the wrapping key in the background; returns at once."""
        self._keys.start()

    async def warm_up(self) -> None:
        """Take one report and resolve its collateral, so readiness means "can attest"."""
        key = await self._keys.current()
        await asyncio.gather(self._evidence_for(key), self._preload())

    async def _preload(self) -> None:
        """Load what the first release needs, so none of it lands on that release's critical path.

        The Azure SDK modules take ~85 ms to import in a fresh process, and MAA's signing keys are
        otherwise fetched after the first attest. Failures here are harmless: the release path does
        the same work itself.
        """
        jobs: list[Awaitable[Any]] = [asyncio.to_thread(self._vault.preload)]
        identity_preload = getattr(self._identity, "preload", None)
        if callable(identity_preload):
            jobs.append(asyncio.to_thread(identity_preload))
        if self._default_maa:
            jobs.append(self._maa.prefetch_signing_keys(self._endpoint(None, self._default_maa, EndpointKind.MAA)))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                _logger.debug("preload step failed (the release path will retry): %s", type(outcome).__name__)

    @property
    def wrapping_key_ready(self) -> bool:
        return self._keys.ready

    async def close(self) -> None:
        await self._keys.close()

    # --- the platform ------------------------------------------------------------------------------

    async def raw_report(self, report_data: bytes, *, with_certificates: bool = False) -> RawEvidence:
        """A fresh report carrying ``report_data`` (64 bytes), from a worker thread."""
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        async with self._platform_lock:
            return await asyncio.to_thread(
                self._platform.get_report, report_data, vmpl=self.options.vmpl, with_certificates=with_certificates
            )

    async def evidence(self, runtime_data: bytes) -> AttestationEvidence:
        """A report binding sha256(runtime_data) plus verified collateral."""
        if len(runtime_data) > RUNTIME_DATA_MAX:
            raise BadRequestError(f"runtime_data is larger than {RUNTIME_DATA_MAX} bytes")
        report_data = hashlib.sha256(runtime_data).digest() + bytes(32)
        raw = await self.raw_report(report_data, with_certificates=True)
        collateral = await self._collateral.resolve(raw.report, raw.certificates)
        self.collateral_ready = True
        return AttestationEvidence(raw, collateral, runtime_data)

    async def _evidence_for(self, key: WrappingKey) -> AttestationEvidence:
        cached = self._evidence.get(key.kid)
        if cached is not None:
            return cached
        evidence = await self._flights.run(("evidence", key.kid), lambda: self.evidence(key.runtime_data))
        self._evidence = {key.kid: evidence}  # only the current key's evidence is worth keeping
        return evidence

    # --- MAA ---------------------------------------------------------------------------------------

    def _maa_evidence(self, evidence: AttestationEvidence) -> MaaEvidence:
        reference = self._context.reference_info if self._context is not None else None
        return MaaEvidence(
            report=evidence.raw.report,
            vcek_chain_pem=evidence.collateral.chain_pem,
            runtime_data=evidence.runtime_data,
            uvm_endorsement=reference,
        )

    async def attest(self, maa: str | None, runtime_data: bytes) -> MaaToken:
        """A fresh MAA token for caller-chosen runtime data (``/attest/maa``); not cached.

        The runtime data goes to MAA as ``dataType: JSON``, so MAA refuses anything that is not JSON.
        That is the caller's mistake, not an attestation failure: check it here and say so (400)
        instead of relaying MAA's refusal as ``attestation_rejected``.
        """
        instance = self._endpoint(maa, self._default_maa, EndpointKind.MAA)
        _require_json(runtime_data)
        evidence = await self.evidence(runtime_data)
        return await self._maa.attest(instance, self._maa_evidence(evidence))

    async def attestation_token(self, instance: Endpoint, key: WrappingKey) -> MaaToken:
        """The cached token for (instance, key), or a new one; identical callers share one call."""
        cache_key = (instance.netloc, key.kid)
        cached = self._tokens.get(cache_key)
        if cached is not None and self._clock() < cached.expires_at - self.options.token_refresh_margin:
            return cached

        async def fetch() -> MaaToken:
            evidence = await self._evidence_for(key)
            token = await self._maa.attest(instance, self._maa_evidence(evidence), runtime_kid=key.kid)
            self._tokens = {k: v for k, v in self._tokens.items() if k[1] == key.kid and self._clock() < v.expires_at}
            self._tokens[cache_key] = token
            return token

        return await self._flights.run(("maa", *cache_key), fetch)

    # --- release -----------------------------------------------------------------------------------

    async def release(
        self,
        *,
        kid: str,
        akv: str | None = None,
        maa: str | None = None,
        access_token: str | None = None,
        enc: str = DEFAULT_ENC,
    ) -> ReleasedJwk:
        """Release ``kid`` from ``akv`` using an attestation token from ``maa``.

        Endpoints are checked against the allow-list before anything is sent anywhere.
        """
        vault = self._endpoint(akv, self._default_akv, EndpointKind.KEY_VAULT)
        instance = self._endpoint(maa, self._default_maa, EndpointKind.MAA)
        key = KeyName.parse(kid)
        token_id = hashlib.sha256(access_token.encode()).hexdigest() if access_token else None
        flight_key = ("release", vault.netloc, str(key), instance.netloc, enc, token_id)
        ttl = self.options.released_key_ttl
        if ttl is not None:
            cached = self._released.get(flight_key)
            if cached is not None and time.monotonic() - cached[0] < ttl.total_seconds():
                return cached[1]

        async def run() -> ReleasedJwk:
            released = await self._release(vault, instance, key, access_token, enc)
            if ttl is not None:
                self._released[flight_key] = (time.monotonic(), released)
            return released

        return await self._flights.run(flight_key, run)

    async def _release(
        self, vault: Endpoint, instance: Endpoint, key: KeyName, access_token: str | None, enc: str
    ) -> ReleasedJwk:
        credential: AsyncTokenCredential
        if access_token:
            credential = RequestTokenCredential(access_token)
        elif self._identity is not None:
            credential = self._identity
        else:
            raise BadRequestError("no access_token in the request and no identity is configured")
        wrapping = await self._keys.current()
        scope = scope_for(vault, self.options.managed_hsm_hosts)
        # Neither the identity token nor the vault's auth challenge depends on attestation: fetch
        # them while the report and MAA steps run, so only report -> MAA -> release is sequential.
        side_tasks = [
            asyncio.ensure_future(credential.get_token(scope, enable_cae=True)),
            asyncio.ensure_future(self._vault.prime_challenge(vault, key)),
        ]
        try:
            token = await self.attestation_token(instance, wrapping)
            try:
                await asyncio.wait_for(asyncio.gather(*side_tasks), self.options.identity_timeout)
            except TimeoutError:
                raise IdentityUnavailableError(
                    f"no access token within {self.options.identity_timeout:.0f} s: the identity provider "
                    "(Entra ID or IMDS) did not answer in time",
                    service="identity",
                ) from None
        except BaseException:
            for task in side_tasks:
                task.cancel()
            raise
        return await self._vault.release(
            vault, key, attestation_token=token.raw, credential=credential, wrapping_key=wrapping, enc=enc
        )

    async def public_key(self, *, kid: str, akv: str | None = None) -> tuple[Endpoint, dict[str, Any]]:
        """The vault and public JWK of ``kid`` (allow-listed vault, the configured identity; no attestation)."""
        vault = self._endpoint(akv, self._default_akv, EndpointKind.KEY_VAULT)
        if self._identity is None:
            raise BadRequestError("wrapping with a vault key needs an identity, and none is configured")
        return vault, await self._vault.public_key(vault, KeyName.parse(kid), credential=self._identity)

    @property
    def default_maa(self) -> str | None:
        """The MAA instance used when a request names none (written into annotations made by wrap)."""
        return self._default_maa

    def _endpoint(self, given: str | None, default: str | None, kind: EndpointKind) -> Endpoint:
        what = "maa_endpoint" if kind is EndpointKind.MAA else "akv_endpoint"
        text = given or default
        if not text:
            raise BadRequestError(f"{what} is required (no default is configured)")
        return self._allow.check(Endpoint.parse(text, what=what), kind)

    def security_context_reference(self) -> bytes | None:
        """The UVM endorsement (reference info) from the security context, if there is one."""
        return self._context.reference_info if self._context is not None else None

    def readiness(self) -> dict[str, bool]:
        """What /status reports: each part must be true to serve releases quickly."""
        return {"wrapping_key": self._keys.ready, "collateral": self.collateral_ready}

    def require_ready(self) -> None:
        missing = [name for name, ok in self.readiness().items() if not ok]
        if missing:
            raise NotReadyError(f"not ready yet: {', '.join(missing)}")


def _require_json(runtime_data: bytes) -> None:
    if len(runtime_data) > RUNTIME_DATA_MAX:
        raise BadRequestError(f"runtime_data is larger than {RUNTIME_DATA_MAX} bytes")
    try:
        json.loads(runtime_data)
    except (ValueError, RecursionError):
        raise BadRequestError(
            "runtime_data must be base64 of JSON for /attest/maa (MAA takes it as dataType JSON); "
            "use /attest/raw for arbitrary bytes"
        ) from None
