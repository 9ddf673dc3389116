"""AMD Key Distribution Service (KDS) and Azure certificate cache ("AzCache") emulators.

Why: when neither the extended report, the ACI security context nor THIM supplies a VCEK chain,
skr fetches it from AMD KDS or the Azure certificate cache (azure-facts §5.1, §5.3). These
emulators serve the simulated platform's certificates in exactly those wire formats.

KDS routes (HTTPS, raw certificate data, not JSON):

* ``GET /vcek/v1/{Milan|Genoa|Turin}/cert_chain`` (route ``kds.cert_chain``): PEM, ASK then ARK.
* ``GET /vlek/v1/{product}/cert_chain`` (route ``kds.vlek_cert_chain``): PEM, ASVK then ARK.
* ``GET /vcek/v1/{product}/crl`` (route ``kds.crl``): a DER CRL signed by the (simulated) ARK.
* ``GET /vcek/v1/{product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=[&fmcSPL=]`` (route ``kds.vcek``):
  the DER VCEK. hwid is 128 hex characters (Milan/Genoa) or 16 (Turin, the first 8 CHIP_ID bytes).
  SPLs are decimal, zero padding accepted, missing ones are 0; like the real KDS it issues a VCEK
  for any valid TCB (the key differs per TCB, so a VCEK for the wrong TCB does not verify the
  report). An unknown hwid is 404; a malformed request 400 (plain-text bodies; the real error
  texts and content types are UNCONFIRMED).

AzCache route (HTTPS, route ``certcache.vcek``):
``GET /SevSnpVM/certificates/{chip_id: 128 hex}/{reported_tcb: hex}?api-version=...&clientId=...``:
PEM VCEK (for that TCB) + ASK + ARK.

Rate limiting (KDS answers 429 under load): arm ``Fault(FaultKind.RATE_LIMIT, endpoint="kds.*")``.

Usage::

    amd = SimulatedAmd.create(Product.MILAN)
    kds = KdsEmulator([amd])
    await kds.start(ca=ca)
    # GET f"{kds.url}/vcek/v1/Milan/{amd.hwid.hex()}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"
    cache = CertCacheEmulator([amd])
    await cache.start(ca=ca)
    # GET f"{cache.url}/SevSnpVM/certificates/{amd.chip_id.hex()}/{amd.reported_tcb.raw:x}"
    #     "?api-version=2020-10-15-preview&clientId=ConfidentialACI"
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Final

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from skr.snp.report import Product, SigningKey, TcbVersion
from skr.snp.vcek import serial_zero_warnings_suppressed
from skr_dev.emulators.faults import FaultSet
from skr_dev.emulators.server import HostedEmulator
from skr_dev.simulated.amd import SimulatedAmd

__all__ = ["CertCacheEmulator", "KdsEmulator", "PlatformRegistry"]

PEM_CONTENT_TYPE: Final = "application/x-pem-file"  # UNCONFIRMED for the real services
DER_CERT_CONTENT_TYPE: Final = "application/pkix-cert"  # UNCONFIRMED
CRL_CONTENT_TYPE: Final = "application/pkix-crl"  # UNCONFIRMED
_SPL_VALUE = re.compile(r"[0-9]{1,3}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_SPL_NAMES: Final = ("blSPL", "teeSPL", "snpSPL", "ucodeSPL", "fmcSPL")


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")


def _pem(certificate_der: bytes) -> bytes:
    with serial_zero_warnings_suppressed():  # AMD VCEKs carry serial number 0
        return x509.load_der_x509_certificate(certificate_der).public_bytes(serialization.Encoding.PEM)


class PlatformRegistry:
    """The simulated chips an emulator knows, by product and hwid / CHIP_ID."""

    def __init__(self, platforms: Iterable[SimulatedAmd] = ()) -> None:
        self._platforms: list[SimulatedAmd] = []
        for platform in platforms:
            self.add(platform)

    def add(self, platform: SimulatedAmd) -> None:
        self._platforms.append(platform)

    def __len__(self) -> int:
        return len(self._platforms)

    def for_product(self, product: Product) -> SimulatedAmd | None:
        for platform in self._platforms:
            if platform.product is product:
                return platform
        return None

    def by_hwid(self, product: Product, hwid: bytes) -> SimulatedAmd | None:
        for platform in self._platforms:
            if platform.product is product and platform.hwid == hwid:
                return platform
        return None

    def by_chip_id(self, chip_id: bytes) -> SimulatedAmd | None:
        for platform in self._platforms:
            if platform.chip_id == chip_id:
                return platform
        return None


def _product(name: str) -> Product | None:
    for product in Product:
        if product.value == name:
            return product
    return None


class KdsEmulator(HostedEmulator):
    """AMD KDS for the simulated chips given. See the module docstring."""

    name = "kds"

    def __init__(self, platforms: Iterable[SimulatedAmd] = (), *, faults: FaultSet | None = None) -> None:
        super().__init__(faults=faults)
        self.platforms = PlatformRegistry(platforms)

    def __repr__(self) -> str:
        return f"KdsEmulator(platforms={len(self.platforms)})"

    def add_platform(self, platform: SimulatedAmd) -> None:
        self.platforms.add(platform)

    def build_app(self) -> web.Application:
        app = self._new_app(client_max_size=4096)
        app.router.add_get("/vcek/v1/{product}/cert_chain", self._cert_chain, name="kds.cert_chain")
        app.router.add_get("/vcek/v1/{product}/crl", self._crl, name="kds.crl")
        app.router.add_get("/vlek/v1/{product}/cert_chain", self._vlek_cert_chain, name="kds.vlek_cert_chain")
        app.router.add_get("/vcek/v1/{product}/{hwid}", self._vcek, name="kds.vcek")
        return app

    def _platform(self, request: web.Request) -> tuple[Product, SimulatedAmd]:
        name = request.match_info["product"]
        product = _product(name)
        if product is None:
            raise web.HTTPNotFound(text=f"unknown product {name[:32]!r}")
        platform = self.platforms.for_product(product)
        if platform is None:
            raise web.HTTPNotFound(text=f"no {product.value} certificates are served by this emulator")
        return product, platform

    async def _cert_chain(self, request: web.Request) -> web.Response:
        _, platform = self._platform(request)
        vcek_platform = dataclasses.replace(platform, signer=SigningKey.VCEK)
        return web.Response(body=vcek_platform.ask_ark_pem(), content_type=PEM_CONTENT_TYPE)

    async def _vlek_cert_chain(self, request: web.Request) -> web.Response:
        _, platform = self._platform(request)
        vlek_platform = dataclasses.replace(platform, signer=SigningKey.VLEK)
        return web.Response(body=vlek_platform.ask_ark_pem(), content_type=PEM_CONTENT_TYPE)

    async def _crl(self, request: web.Request) -> web.Response:
        _, platform = self._platform(request)
        return web.Response(body=platform.crl_der(), content_type=CRL_CONTENT_TYPE)

    async def _vcek(self, request: web.Request) -> web.Response:
        name = request.match_info["product"]
        product = _product(name)
        if product is None:
            return _text(404, f"unknown product {name[:32]!r}")
        hwid_text = request.match_info["hwid"]
        expected = 16 if product is Product.TURIN else 128
        if len(hwid_text) != expected or not _HEX.fullmatch(hwid_text):
            return _text(400, f"a {product.value} hwid is {expected} hexadecimal characters")
        spls: dict[str, int] = {}
        for spl in _SPL_NAMES:
            raw = request.query.get(spl)
            if raw is None:
                continue
            if not _SPL_VALUE.fullmatch(raw) or int(raw) > 255:
                return _text(400, f"{spl} must be a decimal number between 0 and 255")
            spls[spl] = int(raw)
        if product is not Product.TURIN and spls.get("fmcSPL"):
            return _text(400, f"{product.value} has no FMC; fmcSPL must be absent or 0")
        if product is not Product.TURIN:
            spls.pop("fmcSPL", None)
        hwid = bytes.fromhex(hwid_text)
        platform = self.platforms.by_hwid(product, hwid)
        if platform is None:
            return _text(404, "unknown hwid")
        der = platform.vcek_der_for(hwid, spls)
        return web.Response(body=der, content_type=DER_CERT_CONTENT_TYPE)


class CertCacheEmulator(HostedEmulator):
    """The Azure certificate cache (``global.acccache.azure.net``). See the module docstring."""

    name = "certcache"

    def __init__(self, platforms: Iterable[SimulatedAmd] = (), *, faults: FaultSet | None = None) -> None:
        super().__init__(faults=faults)
        self.platforms = PlatformRegistry(platforms)

    def __repr__(self) -> str:
        return f"CertCacheEmulator(platforms={len(self.platforms)})"

    def add_platform(self, platform: SimulatedAmd) -> None:
        self.platforms.add(platform)

    def build_app(self) -> web.Application:
        app = self._new_app(client_max_size=4096)
        app.router.add_get("/{tee}/certificates/{chip_id}/{tcb}", self._vcek, name="certcache.vcek")
        return app

    async def _vcek(self, request: web.Request) -> web.Response:
        if request.match_info["tee"].lower() != "sevsnpvm":
            return _text(404, "unknown TEE type")
        if not request.query.get("api-version"):
            return _text(400, "the api-version query parameter is required")
        chip_text, tcb_text = request.match_info["chip_id"], request.match_info["tcb"]
        if len(chip_text) != 128 or not _HEX.fullmatch(chip_text):
            return _text(400, "chip id must be 128 hexadecimal characters")
        if not 1 <= len(tcb_text) <= 16 or not _HEX.fullmatch(tcb_text):
            return _text(400, "reported TCB must be at most 16 hexadecimal characters")
        platform = self.platforms.by_chip_id(bytes.fromhex(chip_text))
        if platform is None:
            return _text(404, "unknown chip id")
        tcb = TcbVersion(int(tcb_text, 16))
        try:
            tcb.decode(platform.product)
            vcek = platform.vcek_der_for(platform.hwid, tcb)
        except ValueError:
            return _text(400, "reported TCB is not valid for this product")
        vcek_platform = dataclasses.replace(platform, signer=SigningKey.VCEK)
        return web.Response(body=_pem(vcek) + vcek_platform.ask_ark_pem(), content_type=PEM_CONTENT_TYPE)
