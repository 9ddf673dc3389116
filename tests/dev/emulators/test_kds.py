"""AMD KDS and Azure certificate cache emulators: wire formats, what they certify, 404/400, 429."""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings

import aiohttp
import pytest
from cryptography import x509

from skr.errors import VerificationError
from skr.snp.report import Product
from skr.snp.vcek import parse_amd_extensions
from skr.snp.verify import verify_attestation
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.kds import CertCacheEmulator, KdsEmulator
from skr_dev.emulators.tls import TestCertificateAuthority
from skr_dev.simulated.amd import SimulatedAmd

NOW = dt.datetime.now(dt.UTC)


def _load_der(data: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD-style serial number 0
        return x509.load_der_x509_certificate(data)


def _load_pem(data: bytes) -> list[x509.Certificate]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.load_pem_x509_certificates(data)


def _cn(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def _spl_query(platform: SimulatedAmd, *, pad: bool = False) -> str:
    parts = platform.reported_tcb.decode(platform.product)
    fmt = "{:02d}" if pad else "{}"
    query = (
        f"blSPL={fmt.format(parts.bootloader)}&teeSPL={fmt.format(parts.tee)}"
        f"&snpSPL={fmt.format(parts.snp)}&ucodeSPL={fmt.format(parts.microcode)}"
    )
    if platform.product is Product.TURIN:
        query += f"&fmcSPL={fmt.format(parts.fmc)}"
    return query


@pytest.fixture(scope="module")
def turin() -> SimulatedAmd:
    return SimulatedAmd.create(Product.TURIN)


async def test_cert_chain_is_ask_then_ark(
    kds_emulator: KdsEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    status, content_type, body = await _get(https_session, f"{kds_emulator.url}/vcek/v1/Milan/cert_chain")
    assert (status, content_type) == (200, "application/x-pem-file")
    ask, ark = _load_pem(body)
    assert (_cn(ask), _cn(ark)) == ("SEV-Milan", "ARK-Milan")
    assert body == emulator_platform.ask_ark_pem()
    status, _, body = await _get(https_session, f"{kds_emulator.url}/vlek/v1/Milan/cert_chain")
    asvk, ark2 = _load_pem(body)
    assert (_cn(asvk), ark2) == ("SEV-VLEK-Milan", ark)


async def test_vcek_verifies_the_chips_report(
    kds_emulator: KdsEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    hwid = emulator_platform.hwid.hex()
    status, content_type, der = await _get(
        https_session, f"{kds_emulator.url}/vcek/v1/Milan/{hwid}?{_spl_query(emulator_platform)}"
    )
    assert (status, content_type) == (200, "application/pkix-cert")
    _, _, chain = await _get(https_session, f"{kds_emulator.url}/vcek/v1/Milan/cert_chain")
    vcek = _load_der(der)
    assert _cn(vcek) == "SEV-VCEK"
    report = emulator_platform.sign_report(hashlib.sha256(b"kds").digest() + bytes(32))
    verified = verify_attestation(report, [vcek, *_load_pem(chain)], trusted=emulator_platform.trusted_roots(), now=NOW)
    assert verified.product is Product.MILAN
    # zero-padded SPLs (what some clients send) give the very same certificate
    _, _, padded = await _get(
        https_session, f"{kds_emulator.url}/vcek/v1/Milan/{hwid}?{_spl_query(emulator_platform, pad=True)}"
    )
    assert padded == der
    # upper-case hex is accepted too
    assert (
        await _get(https_session, f"{kds_emulator.url}/vcek/v1/Milan/{hwid.upper()}?{_spl_query(emulator_platform)}")
    )[2] == der


async def test_any_tcb_is_certified_but_does_not_verify_the_report(
    kds_emulator: KdsEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    hwid = emulator_platform.hwid.hex()
    status, _, der = await _get(
        https_session, f"{kds_emulator.url}/vcek/v1/Milan/{hwid}?ucodeSPL=200&snpSPL=22&teeSPL=0&blSPL=4"
    )
    assert status == 200
    extensions = parse_amd_extensions(_load_der(der))
    assert (extensions.bootloader, extensions.tee, extensions.snp, extensions.microcode) == (4, 0, 22, 200)
    assert extensions.hwid == emulator_platform.hwid
    # missing SPLs default to 0, as at KDS
    _, _, zero = await _get(https_session, f"{kds_emulator.url}/vcek/v1/Milan/{hwid}")
    assert parse_amd_extensions(_load_der(zero)).microcode == 0
    report = emulator_platform.sign_report(bytes(64))
    with pytest.raises(VerificationError):
        verify_attestation(report, [_load_der(der)], trusted=emulator_platform.trusted_roots(), now=NOW)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/vcek/v1/Milan/" + "ab" * 64, 404),  # unknown hwid
        ("/vcek/v1/Milan/" + "ab" * 8, 400),  # Turin-length hwid for Milan
        ("/vcek/v1/Milan/" + "zz" * 64, 400),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?blSPL=256", 400),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?blSPL=-1", 400),
        ("/vcek/v1/Milan/" + "ab" * 64 + "?fmcSPL=3", 400),
        ("/vcek/v1/Venice/" + "ab" * 64, 404),
        ("/vcek/v1/milan/cert_chain", 404),
        ("/vcek/v1/Genoa/cert_chain", 404),  # no Genoa chip registered
    ],
)
async def test_kds_errors(
    kds_emulator: KdsEmulator, https_session: aiohttp.ClientSession, path: str, status: int
) -> None:
    assert (await _get(https_session, kds_emulator.url + path))[0] == status


async def test_turin_uses_an_8_byte_hwid_and_fmc(
    emulator_ca: TestCertificateAuthority, https_session: aiohttp.ClientSession, turin: SimulatedAmd
) -> None:
    kds = KdsEmulator([turin])
    async with kds.running(ca=emulator_ca):
        url = f"{kds.url}/vcek/v1/Turin/{turin.hwid.hex()}?{_spl_query(turin)}"
        assert len(turin.hwid.hex()) == 16
        status, _, der = await _get(https_session, url)
        assert status == 200
        extensions = parse_amd_extensions(_load_der(der))
        assert extensions.hwid == turin.hwid
        assert extensions.fmc == turin.reported_tcb.decode(Product.TURIN).fmc
        assert (await _get(https_session, f"{kds.url}/vcek/v1/Turin/{turin.chip_id.hex()}"))[0] == 400


async def test_crl_is_signed_by_the_ark(
    kds_emulator: KdsEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    status, content_type, der = await _get(https_session, f"{kds_emulator.url}/vcek/v1/Milan/crl")
    assert (status, content_type) == (200, "application/pkix-crl")
    crl = x509.load_der_x509_crl(der)
    ark = emulator_platform.ark_certificate()
    assert crl.issuer == ark.subject
    assert crl.is_signature_valid(ark.public_key())  # type: ignore[arg-type]


async def test_rate_limit_through_the_fault_switch(
    kds_emulator: KdsEmulator, https_session: aiohttp.ClientSession
) -> None:
    kds_emulator.faults.add(Fault(FaultKind.RATE_LIMIT, "kds.*", retry_after=3, times=1))
    async with https_session.get(f"{kds_emulator.url}/vcek/v1/Milan/cert_chain") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "3"
    assert (await _get(https_session, f"{kds_emulator.url}/vcek/v1/Milan/cert_chain"))[0] == 200


async def test_certcache_serves_vcek_ask_ark(
    certcache_emulator: CertCacheEmulator, https_session: aiohttp.ClientSession, emulator_platform: SimulatedAmd
) -> None:
    tcb = f"{emulator_platform.reported_tcb.raw:x}"
    url = (
        f"{certcache_emulator.url}/SevSnpVM/certificates/{emulator_platform.chip_id.hex()}/{tcb}"
        "?api-version=2020-10-15-preview&clientId=ConfidentialACI"
    )
    status, content_type, body = await _get(https_session, url)
    assert (status, content_type) == (200, "application/x-pem-file")
    certificates = _load_pem(body)
    assert [_cn(c) for c in certificates] == ["SEV-VCEK", "SEV-Milan", "ARK-Milan"]
    assert body == emulator_platform.vcek_pem_chain()
    report = emulator_platform.sign_report(bytes(64))
    verify_attestation(report, body, trusted=emulator_platform.trusted_roots(), now=NOW)
    assert (await _get(https_session, url.replace("/SevSnpVM/", "/sevsnpvm/")))[0] == 200


@pytest.mark.parametrize(
    ("suffix", "status"),
    [
        ("/SevSnpVM/certificates/{chip}/{tcb}", 400),  # no api-version
        ("/SevSnpVM/certificates/{other}/{tcb}?api-version=x", 404),
        ("/SevSnpVM/certificates/{chip}/xyz?api-version=x", 400),
        ("/SevSnpVM/certificates/{chip}/{long}?api-version=x", 400),
        ("/SevSnpVM/certificates/abcd/{tcb}?api-version=x", 400),
        ("/TdxVM/certificates/{chip}/{tcb}?api-version=x", 404),
    ],
)
async def test_certcache_errors(
    certcache_emulator: CertCacheEmulator,
    https_session: aiohttp.ClientSession,
    emulator_platform: SimulatedAmd,
    suffix: str,
    status: int,
) -> None:
    path = suffix.format(
        chip=emulator_platform.chip_id.hex(),
        other="cd" * 64,
        tcb=f"{emulator_platform.reported_tcb.raw:x}",
        long="1" * 17,
    )
    assert (await _get(https_session, certcache_emulator.url + path))[0] == status
