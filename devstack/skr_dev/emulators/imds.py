"""Azure Instance Metadata Service (IMDS) emulator: managed-identity tokens and AMD THIM collateral.

Why: on Confidential ACI and non-workload-identity AKS, skr gets Key Vault tokens from IMDS and
the VCEK chain from THIM (azure-facts §4.5, §5.2). The real ``ManagedIdentityCredential`` (sync:
MSAL; async: azure-identity's own client) must talk to this emulator unchanged when
``AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:PORT`` is set.

Routes (plain HTTP, loopback only, both require the ``Metadata: true`` header):

* ``GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...[&client_id=|object_id=|msi_res_id=]``
  (route ``imds.token``). Answers IMDS's shape with EVERY field a string: ``access_token,
  client_id, expires_in, expires_on, ext_expires_in, not_before, resource, token_type``. Tokens are
  signed by the :class:`~skr_dev.emulators.entra.EntraEmulator` key for the identity's client id.
  Errors are ``400 {"error": "invalid_request", "error_description": ...}``; an unknown identity is
  400 "Identity not found", never 404 (azure-identity retries 404/410/429/5xx).
* ``GET /metadata/THIM/amd/certification`` (route ``imds.thim``): ``{"vcekCert", "tcbm",
  "certificateChain", "cacheControl"}`` (all strings) from the simulated platform.

Semantic faults on ``imds.token`` (BAD_SIGNATURE, EXPIRED_TOKEN, UNKNOWN_KID) shape the token.

Usage::

    entra = EntraEmulator()
    imds = ImdsEmulator(entra, identities=[ManagedIdentity("c0ffee00-...")], platform=SimulatedAmd.create())
    await imds.start()                                         # HTTP: no CA needed
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    token = ManagedIdentityCredential(client_id="c0ffee00-...").get_token("https://vault.azure.net/.default")
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from skr_dev.emulators.entra import EntraEmulator
from skr_dev.emulators.faults import FaultSet
from skr_dev.emulators.server import HostedEmulator, json_response
from skr_dev.simulated.amd import SimulatedAmd

__all__ = ["DEFAULT_MANAGED_IDENTITY_CLIENT_ID", "SUPPORTED_API_VERSIONS", "ImdsEmulator", "ManagedIdentity"]

DEFAULT_MANAGED_IDENTITY_CLIENT_ID: Final = "5a7e0000-0000-4000-8000-0000000000d5"
"""The user-assigned managed identity ``skr dev`` registers."""
SUPPORTED_API_VERSIONS: Final = frozenset({"2018-02-01", "2019-06-01", "2019-08-01", "2019-11-01", "2021-02-01"})
TOKEN_LIFETIME: Final = 86399
_MAX_QUERY_VALUE: Final = 512


@dataclass(frozen=True, slots=True)
class ManagedIdentity:
    """A managed identity attached to the emulated machine.

    ``resource_id`` (``/subscriptions/.../userAssignedIdentities/NAME``) is optional; when given it
    selects the identity via ``msi_res_id`` and appears in tokens as ``xms_mirid`` and
    ``xms_az_rid`` (GO-REF reads the subscription from the latter).
    """

    client_id: str
    object_id: str | None = None
    resource_id: str | None = None
    system_assigned: bool = False

    @property
    def principal_id(self) -> str:
        return self.object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"skr-emulator-mi:{self.client_id.lower()}"))


class _ImdsError(Exception):
    def __init__(self, description: str, *, error: str = "invalid_request", status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class ImdsEmulator(HostedEmulator):
    """IMDS identity and THIM endpoints over plain HTTP. See the module docstring."""

    name = "imds"
    requires_tls = False

    def __init__(
        self,
        entra: EntraEmulator,
        *,
        identities: Iterable[ManagedIdentity | str] = (),
        platform: SimulatedAmd | None = None,
        thim: Callable[[], Mapping[str, str]] | None = None,
        faults: FaultSet | None = None,
        token_lifetime: int = TOKEN_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(faults=faults)
        self.entra = entra
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._identities: list[ManagedIdentity] = []
        for identity in identities:
            self.add_identity(identity)
        if thim is None and platform is not None:
            source = platform
            thim = source.thim_json
        self._thim = thim

    def __repr__(self) -> str:
        return f"ImdsEmulator(identities={[i.client_id for i in self._identities]})"

    @property
    def identities(self) -> tuple[ManagedIdentity, ...]:
        return tuple(self._identities)

    def add_identity(self, identity: ManagedIdentity | str) -> ManagedIdentity:
        """Attach a managed identity (a client id string means a user-assigned identity)."""
        entry = ManagedIdentity(identity.lower()) if isinstance(identity, str) else identity
        if entry.system_assigned and any(i.system_assigned for i in self._identities):
            raise ValueError("a machine has at most one system-assigned identity")
        self._identities.append(entry)
        return entry

    def set_thim_source(self, thim: Callable[[], Mapping[str, str]] | None) -> None:
        """Serve THIM collateral from ``thim`` (None: THIM answers 404 as on a non-SNP host)."""
        self._thim = thim

    # --- HTTP -------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = self._new_app(client_max_size=16 * 1024)
        app.router.add_get("/metadata/identity/oauth2/token", self._token, name="imds.token")
        app.router.add_get("/metadata/THIM/amd/certification", self._thim_route, name="imds.thim")
        return app

    @staticmethod
    def _error(error: _ImdsError) -> web.Response:
        return json_response({"error": error.error, "error_description": error.description}, status=error.status)

    @staticmethod
    def _require_metadata_header(request: web.Request) -> None:
        if request.headers.get("Metadata", "").strip().lower() != "true":
            raise _ImdsError("Required metadata header not specified")

    def _select(self, query: Mapping[str, str]) -> ManagedIdentity:
        selectors = {
            name: query[name]
            for name in ("client_id", "object_id", "msi_res_id", "mi_res_id", "principal_id")
            if query.get(name)
        }
        if len(selectors) > 1:
            raise _ImdsError("Only one of client_id, object_id or msi_res_id may be specified")
        for value in selectors.values():
            if len(value) > _MAX_QUERY_VALUE:
                raise _ImdsError("Identity not found")
        if not selectors:
            system = [i for i in self._identities if i.system_assigned]
            if system:
                return system[0]
            if len(self._identities) == 1:
                return self._identities[0]
            if not self._identities:
                raise _ImdsError("Identity not found")
            raise _ImdsError(
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the "
                "identity in the token request"
            )
        ((name, value),) = selectors.items()
        wanted = value.lower()
        for identity in self._identities:
            if name == "client_id" and identity.client_id.lower() == wanted:
                return identity
            if name in ("object_id", "principal_id") and identity.principal_id.lower() == wanted:
                return identity
            if name in ("msi_res_id", "mi_res_id") and (identity.resource_id or "").lower() == wanted:
                return identity
        raise _ImdsError("Identity not found")

    async def _token(self, request: web.Request) -> web.Response:
        try:
            self._require_metadata_header(request)
            api_version = request.query.get("api-version")
            if not api_version:
                raise _ImdsError("Required query variable 'api-version' is missing")
            if api_version not in SUPPORTED_API_VERSIONS:
                raise _ImdsError("Invalid or unsupported api-version")
            resource = request.query.get("resource", "")
            if not resource:
                raise _ImdsError("Required query variable 'resource' is missing")
            if len(resource) > _MAX_QUERY_VALUE or any(c.isspace() for c in resource):
                raise _ImdsError("Invalid resource")
            identity = self._select(request.query)
        except _ImdsError as exc:
            return self._error(exc)
        extra: dict[str, Any] = {"oid": identity.principal_id, "sub": identity.principal_id}
        if identity.resource_id:
            extra["xms_mirid"] = identity.resource_id
            extra["xms_az_rid"] = identity.resource_id
        issued = self.entra.issue_access_token(
            identity.client_id,
            resource,
            endpoint="imds.token",
            extra_claims=extra,
            lifetime=self.token_lifetime,
            faults=self.faults,
        )
        return json_response(
            {
                "access_token": issued.access_token.reveal(),
                "client_id": identity.client_id,
                "expires_in": str(issued.expires_in),
                "expires_on": str(issued.expires_on),
                "ext_expires_in": str(issued.expires_in),
                "not_before": str(issued.not_before),
                "resource": resource,
                "token_type": "Bearer",
            }
        )

    async def _thim_route(self, request: web.Request) -> web.Response:
        try:
            self._require_metadata_header(request)
        except _ImdsError as exc:
            return self._error(exc)
        if self._thim is None:
            return json_response(
                {"error": "not_found", "error_description": "No THIM certificates on this host"}, status=404
            )
        document = self._thim()
        return json_response({name: str(value) for name, value in document.items()})
