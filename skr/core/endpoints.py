"""Remote endpoints named by configuration or requests, and the allow-list that guards them.

Requests name endpoints as bare hosts (``sharedeus.eus.attest.azure.net``), like the Go sidecar, or
as ``https://host[:port]``. Both parse into one :class:`Endpoint`. Anything else (another scheme,
a path, credentials, a query) is refused rather than repaired, so ``https://https://...`` bugs and
smuggled paths cannot happen.

The allow-list is checked before any connection is made: a vault token is never sent to a host
outside it. Exact hosts (with port when not 443) are the recommended configuration; without any,
the Azure public-cloud suffixes apply and the service warns at start-up.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from skr.errors import BadRequestError, EndpointNotAllowedError

__all__ = ["AZURE_PUBLIC_SUFFIXES", "AllowList", "Endpoint", "EndpointKind", "is_loopback_host"]

_HOST_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_ENDPOINT_LENGTH: Final = 300


class EndpointKind(enum.Enum):
    """What a host is for; decides which default suffixes apply."""

    MAA = "maa"
    KEY_VAULT = "akv"


AZURE_PUBLIC_SUFFIXES: Final[dict[EndpointKind, tuple[str, ...]]] = {
    EndpointKind.MAA: (".attest.azure.net",),
    EndpointKind.KEY_VAULT: (".vault.azure.net", ".managedhsm.azure.net"),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An HTTPS origin: lowercase host and an optional non-default port."""

    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str, *, what: str = "endpoint") -> Endpoint:
        """Parse ``host``, ``host:port``, ``https://host[:port][/]``; raise BadRequestError otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise BadRequestError(f"{what} must be a non-empty host name")
        value = text.strip()
        if len(value) > MAX_ENDPOINT_LENGTH:
            raise BadRequestError(f"{what} is too long")
        if "://" in value:
            scheme, _, value = value.partition("://")
            if scheme.lower() != "https":
                raise BadRequestError(f"{what} must use https (got scheme {scheme[:10]!r})")
        value = value.removesuffix("/")
        if any(c in value for c in "/?#@\\ "):
            raise BadRequestError(f"{what} must be a bare host or https://host[:port], without path or credentials")
        host, port = value, None
        if value.startswith("["):
            if "]" not in value:
                raise BadRequestError(f"{what} has an unterminated IPv6 literal")
            inner, _, rest = value[1:].partition("]")
            host = inner
            if rest:
                if not rest.startswith(":"):
                    raise BadRequestError(f"{what} has a malformed port")
                port = _parse_port(rest[1:], what)
        elif value.count(":") == 1:
            host, _, port_text = value.partition(":")
            port = _parse_port(port_text, what)
        host = host.lower()
        if not _valid_host(host):
            raise BadRequestError(f"{what} {host[:80]!r} is not a valid host name")
        return cls(host, None if port == 443 else port)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self.netloc}"

    @property
    def is_managed_hsm(self) -> bool:
        return self.host.endswith(".managedhsm.azure.net")

    def __str__(self) -> str:
        return self.netloc


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_port(text: str, what: str) -> int:
    # ASCII digits only: str.isdigit() accepts superscripts (int() then raises) and int() accepts
    # full-width digits, so neither may decide what a port is.
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise BadRequestError(f"{what} has an invalid port")
    return int(text)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
    return True


@dataclass(frozen=True, slots=True)
class AllowList:
    """Exact hosts per kind, else the default suffixes. An empty exact list means "suffixes"."""

    maa_hosts: frozenset[str] = field(default_factory=frozenset)
    vault_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_hosts(cls, maa: Iterable[str] = (), vault: Iterable[str] = ()) -> AllowList:
        """Build from configured hosts (any form :meth:`Endpoint.parse` accepts)."""
        return cls(
            frozenset(Endpoint.parse(h, what="allowed MAA endpoint").netloc for h in maa),
            frozenset(Endpoint.parse(h, what="allowed Key Vault endpoint").netloc for h in vault),
        )

    @property
    def pinned(self) -> bool:
        """Both kinds pinned to exact hosts (the recommended set-up)."""
        return bool(self.maa_hosts) and bool(self.vault_hosts)

    def check(self, endpoint: Endpoint, kind: EndpointKind) -> Endpoint:
        """Return ``endpoint`` if allowed; raise EndpointNotAllowedError before any connection."""
        exact = self.maa_hosts if kind is EndpointKind.MAA else self.vault_hosts
        if exact:
            if endpoint.netloc in exact:
                return endpoint
        elif endpoint.port is None and endpoint.host.endswith(AZURE_PUBLIC_SUFFIXES[kind]):
            return endpoint
        label = "attestation" if kind is EndpointKind.MAA else "key vault"
        raise EndpointNotAllowedError(
            f"{label} endpoint {endpoint.netloc!r} is not in the allow-list; "
            f"add it to SKR_ALLOWED_{'MAA' if kind is EndpointKind.MAA else 'AKV'}_ENDPOINTS to permit it"
        )
