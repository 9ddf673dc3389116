"""SIMULATED AMD SEV-SNP platform: a fake ARK -> ASK/ASVK -> VCEK/VLEK hierarchy that signs reports.

NOT FOR PRODUCTION. Everything here is shaped exactly like AMD's real artefacts so that simulated
reports travel through the *same* verification code as real ones (:func:`skr.snp.verify.verify_attestation`):

* ARK, ASK and ASVK are RSA-4096 certificates signed with RSASSA-PSS (SHA-384, MGF1-SHA-384, salt
  48), with AMD's names (``CN=ARK-Milan``, ``CN=SEV-Milan``, ``CN=SEV-VLEK-Milan``,
  ``O=Advanced Micro Devices`` ...), serials, key usages and CRL distribution points;
* VCEKs and VLEKs are P-384 certificates with serial number 0 (like AMD's) and AMD's extensions:
  structVersion (0 Milan/Genoa, 1 Turin), productName, SPLs as DER INTEGERs, a raw hwID (64 bytes;
  8 on Turin) or a CSP_ID (VLEK);
* as on real hardware the VCEK key is derived from a per-chip secret *and the TCB*: a VCEK issued
  for another TCB has another key (derived here with HMAC-SHA-384 from a random hierarchy secret).

The hierarchy is generated once per product and process (RSA-4096 key generation is slow) and is
random: nothing outside this process trusts it, and :meth:`skr.snp.verify.TrustedRoots.amd`
rejects every certificate it issues. Use :meth:`SimulatedAmd.trusted_roots` to verify its reports.

Example::

    amd = SimulatedAmd.create(Product.GENOA)
    report = amd.sign_report(hashlib.sha256(b"nonce").digest() + bytes(32), host_data=policy_hash)
    verify_attestation(report, amd.vcek_pem_chain(), trusted=amd.trusted_roots(), now=now)
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from skr.snp.certtable import CertKind, build_certificate_table
from skr.snp.report import (
    AttestationReport,
    GuestPolicy,
    PlatformInfo,
    Product,
    SigningKey,
    TcbParts,
    TcbVersion,
)
from skr.snp.vcek import (
    OID_BL_SPL,
    OID_CSP_ID,
    OID_FMC_SPL,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_STRUCT_VERSION,
    OID_TEE_SPL,
    OID_UCODE_SPL,
    serial_zero_warnings_suppressed,
)
from skr.snp.verify import AMD_PSS_PADDING, TrustedRoots
from skr_dev import SIMULATED_BANNER

__all__ = ["DEFAULT_TCB", "SimulatedAmd", "simulated_trusted_roots"]

_P384_ORDER: Final = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16
)
_CA_NOT_BEFORE: Final = datetime(2020, 1, 1, tzinfo=UTC)
_CA_NOT_AFTER: Final = datetime(2050, 1, 1, tzinfo=UTC)
_LEAF_NOT_BEFORE: Final = datetime(2021, 1, 1, tzinfo=UTC)
_LEAF_NOT_AFTER: Final = datetime(2049, 1, 1, tzinfo=UTC)

# (ARK, ASK, ASVK) serial numbers as AMD numbers them.
_SERIALS: Final = {
    Product.MILAN: (0x10000, 0x10001, 0x10101),
    Product.GENOA: (0x20000, 0x20002, 0x20101),
    Product.TURIN: (0x30000, 0x30001, 0x30101),
}
# CPUID family / model / stepping written into v3+ reports.
_CPUID: Final = {
    Product.MILAN: (0x19, 0x01, 0x01),
    Product.GENOA: (0x19, 0x11, 0x01),
    Product.TURIN: (0x1A, 0x02, 0x01),
}
# The productName a KDS VCEK carries (the VLEK carries the bare product name).
_VCEK_PRODUCT_NAME: Final = {Product.MILAN: "Milan-B0", Product.GENOA: "Genoa", Product.TURIN: "Turin"}

DEFAULT_TCB: Final = {
    Product.MILAN: TcbVersion.encode(Product.MILAN, bootloader=3, tee=0, snp=8, microcode=115),
    Product.GENOA: TcbVersion.encode(Product.GENOA, bootloader=10, tee=0, snp=23, microcode=84),
    Product.TURIN: TcbVersion.encode(Product.TURIN, bootloader=1, tee=0, snp=2, microcode=71, fmc=0),
}
"""The TCB a fresh simulated chip reports (the values of real reports in the test vectors)."""

_KDS_SPL_NAMES: Final = {
    "blSPL": "bootloader",
    "teeSPL": "tee",
    "snpSPL": "snp",
    "ucodeSPL": "microcode",
    "fmcSPL": "fmc",
}


def _amd_name(common_name: str) -> x509.Name:
    """A subject in the exact RDN order AMD uses."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _der_integer(value: int) -> bytes:
    content = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(content)]) + content


def _der_ia5(text: str) -> bytes:
    content = text.encode("ascii")
    if len(content) >= 0x80:
        raise ValueError("string too long for this simulator")
    return bytes([0x16, len(content)]) + content


def _sign_pss(builder: x509.CertificateBuilder, key: rsa.RSAPrivateKey) -> x509.Certificate:
    with serial_zero_warnings_suppressed():  # serial 0 for VCEK/VLEK, as AMD issues them
        return builder.sign(key, hashes.SHA384(), rsa_padding=AMD_PSS_PADDING)


def _key_usage(*, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _crl_point(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)])


@dataclass(frozen=True, slots=True, eq=False)
class _Hierarchy:
    """One product's simulated AMD keys and CA certificates (process-wide, see :func:`_hierarchy`)."""

    product: Product
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    asvk_key: rsa.RSAPrivateKey
    asvk: x509.Certificate
    secret: bytes  # stands in for the chips' fused secrets and the CSP's VLEK hashstick
    issued: dict[tuple[object, ...], x509.Certificate] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def derived_key(self, label: bytes, identity: bytes, tcb: TcbVersion) -> ec.EllipticCurvePrivateKey:
        """A P-384 key that depends on the identity (hwID or CSP) and the TCB, like AMD's VCEK/VLEK."""
        mac = hmac.HMAC(self.secret, hashes.SHA384())
        mac.update(label + b"\0" + identity + tcb.raw.to_bytes(8, "little"))
        scalar = int.from_bytes(mac.finalize(), "big") % (_P384_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP384R1())


def _ca_certificate(
    *,
    subject: str,
    issuer: x509.Certificate | None,
    key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    serial: int,
    crl_url: str,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_amd_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _amd_name(subject))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_CA_NOT_BEFORE)
        .not_valid_after(_CA_NOT_AFTER)
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    if issuer is None:  # the ARK; extension order as in AMD's ARKs
        builder = (
            builder.add_extension(_key_usage(crl_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        )
    else:  # an ASK or ASVK
        builder = (
            builder.add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(crl_sign=False), critical=True)
        )
    builder = builder.add_extension(_crl_point(crl_url), critical=False)
    return _sign_pss(builder, issuer_key)


_HIERARCHIES: dict[Product, _Hierarchy] = {}
_HIERARCHIES_LOCK = threading.Lock()


def _hierarchy(product: Product) -> _Hierarchy:
    """The simulated ARK, ASK and ASVK of ``product``, generated once per process.

    A lock (not just a cache) so two threads asking at once cannot end up with different roots.
    """
    with _HIERARCHIES_LOCK:
        hierarchy = _HIERARCHIES.get(product)
        if hierarchy is None:
            hierarchy = _HIERARCHIES[product] = _generate_hierarchy(product)
        return hierarchy


def _generate_hierarchy(product: Product) -> _Hierarchy:
    ark_serial, ask_serial, asvk_serial = _SERIALS[product]
    name = product.value
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    asvk_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    vcek_crl = f"https://kdsintf.amd.com/vcek/v1/{name}/crl"
    ark = _ca_certificate(
        subject=f"ARK-{name}", issuer=None, key=ark_key, issuer_key=ark_key, serial=ark_serial, crl_url=vcek_crl
    )
    ask = _ca_certificate(
        subject=f"SEV-{name}", issuer=ark, key=ask_key, issuer_key=ark_key, serial=ask_serial, crl_url=vcek_crl
    )
    asvk = _ca_certificate(
        subject=f"SEV-VLEK-{name}",
        issuer=ark,
        key=asvk_key,
        issuer_key=ark_key,
        serial=asvk_serial,
        crl_url=f"https://kdsintf.amd.com/vlek/v1/{name}/crl",
    )
    return _Hierarchy(
        product=product,
        ark_key=ark_key,
        ark=ark,
        ask_key=ask_key,
        ask=ask,
        asvk_key=asvk_key,
        asvk=asvk,
        secret=os.urandom(48),
    )


def simulated_trusted_roots(products: Iterable[Product] = tuple(Product)) -> TrustedRoots:
    """The simulated ARK/ASK/ASVK of ``products`` as :class:`TrustedRoots` (named as simulated)."""
    chains = {}
    for product in products:
        hierarchy = _hierarchy(product)
        chains[product] = (hierarchy.ark, hierarchy.ask, hierarchy.asvk)
    return TrustedRoots.from_certificates(chains, name=f"simulated ({SIMULATED_BANNER})")


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in certificates)


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _normalise_spls(product: Product, spls: Mapping[str, int] | TcbParts | TcbVersion) -> TcbVersion:
    if isinstance(spls, TcbVersion):
        return spls
    if isinstance(spls, TcbParts):
        values = spls.as_dict()
    else:
        values = {}
        for key, value in spls.items():
            name = _KDS_SPL_NAMES.get(key, key)
            if name not in ("bootloader", "tee", "snp", "microcode", "fmc"):
                raise ValueError(f"unknown SPL {key!r}")
            if not 0 <= int(value) <= 0xFF:
                raise ValueError(f"SPL {key}={value} is outside 0..255")
            values[name] = int(value)
    fmc = values.get("fmc", 0)
    if product is not Product.TURIN and fmc:
        raise ValueError(f"{product.value} has no FMC")
    return TcbVersion.encode(
        product,
        bootloader=values.get("bootloader", 0),
        tee=values.get("tee", 0),
        snp=values.get("snp", 0),
        microcode=values.get("microcode", 0),
        fmc=fmc,
    )


@dataclass(frozen=True, slots=True)
class SimulatedAmd:
    """One simulated SEV-SNP chip (or, with ``signer=VLEK``, one cloud provider's VLEK) of a product.

    Build with :meth:`create`. Reports are signed with the VCEK (or VLEK) derived for the report's
    REPORTED_TCB, exactly as the firmware would.
    """

    product: Product
    signer: SigningKey
    chip_id: bytes
    reported_tcb: TcbVersion
    csp_id: str
    report_id: bytes

    def __repr__(self) -> str:
        return (
            f"SimulatedAmd({SIMULATED_BANNER}; product={self.product.value}, signer={self.signer.name}, "
            f"reported_tcb={self.reported_tcb.tcbm()})"
        )

    @classmethod
    def create(
        cls,
        product: Product = Product.MILAN,
        *,
        signer: SigningKey = SigningKey.VCEK,
        chip_id: bytes | None = None,
        reported_tcb: TcbVersion | int | None = None,
        csp_id: str = "CN=simulated-csp.invalid",
    ) -> SimulatedAmd:
        """A simulated chip; ``chip_id`` defaults to random (Turin: 8 random bytes then zeros)."""
        if signer not in (SigningKey.VCEK, SigningKey.VLEK):
            raise ValueError("signer must be the VCEK or the VLEK")
        if chip_id is None:
            size = 8 if product is Product.TURIN else 64
            chip_id = os.urandom(size).ljust(64, b"\0")
        if len(chip_id) != 64:
            raise ValueError("chip_id must be 64 bytes")
        if product is Product.TURIN and any(chip_id[8:]):
            raise ValueError("a Turin CHIP_ID is 8 bytes of hwID followed by zeros")
        tcb = DEFAULT_TCB[product] if reported_tcb is None else reported_tcb
        if isinstance(tcb, int):
            tcb = TcbVersion(tcb)
        _hierarchy(product)  # generate (or reuse) the keys now, not in the middle of a request
        return cls(
            product=product,
            signer=signer,
            chip_id=bytes(chip_id),
            reported_tcb=tcb,
            csp_id=csp_id,
            report_id=os.urandom(32),
        )

    # --- the hierarchy --------------------------------------------------------------------------

    @property
    def _h(self) -> _Hierarchy:
        return _hierarchy(self.product)

    @property
    def hwid(self) -> bytes:
        """The hwID KDS keys VCEKs by: CHIP_ID, or its first 8 bytes on Turin."""
        return self.chip_id[:8] if self.product is Product.TURIN else self.chip_id

    def trusted_roots(self) -> TrustedRoots:
        """The roots that verify this simulator's reports (this product's simulated ARK/ASK/ASVK)."""
        return simulated_trusted_roots((self.product,))

    def ark_certificate(self) -> x509.Certificate:
        return self._h.ark

    def ca_certificate(self) -> x509.Certificate:
        """The ASK (VCEK signer) or the ASVK (VLEK signer)."""
        return self._h.ask if self.signer is SigningKey.VCEK else self._h.asvk

    def ask_ark_pem(self) -> bytes:
        """KDS ``cert_chain``: the ASK (or ASVK) then the ARK, PEM."""
        return _pem(self.ca_certificate(), self._h.ark)

    def crl_der(self, revoked_serials: Iterable[int] = ()) -> bytes:
        """A KDS-style CRL signed by the ARK (RSASSA-PSS) listing ``revoked_serials``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._h.ark.subject)
            .last_update(_CA_NOT_BEFORE)
            .next_update(_CA_NOT_AFTER)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_CA_NOT_BEFORE).build()
            )
        crl = builder.sign(self._h.ark_key, hashes.SHA384(), rsa_padding=AMD_PSS_PADDING)
        return crl.public_bytes(serialization.Encoding.DER)

    # --- signer certificates ----------------------------------------------------------------------

    def vcek_der_for(
        self,
        hwid: bytes | str,
        spls: Mapping[str, int] | TcbParts | TcbVersion,
        *,
        key_tcb: TcbVersion | None = None,
        omit_product_name: bool = False,
        not_before: datetime = _LEAF_NOT_BEFORE,
        not_after: datetime = _LEAF_NOT_AFTER,
    ) -> bytes:
        """KDS ``GET /vcek/v1/{product}/{hwid}?blSPL=..``: the DER VCEK for any chip and TCB.

        ``spls`` uses KDS names (``blSPL``, ``teeSPL``, ``snpSPL``, ``ucodeSPL``, ``fmcSPL``) or
        :class:`TcbParts` names; missing ones are 0, as at KDS. For negative tests only, and
        giving certificates no honest KDS issues: ``key_tcb`` derives the key for another TCB than
        the certificate states, ``omit_product_name`` leaves out the productName extension.
        """
        hwid_bytes = bytes.fromhex(hwid) if isinstance(hwid, str) else bytes(hwid)
        expected = 8 if self.product is Product.TURIN else 64
        if len(hwid_bytes) != expected:
            raise ValueError(f"a {self.product.value} hwID is {expected} bytes")
        tcb = _normalise_spls(self.product, spls)
        return _der(
            self._leaf(
                SigningKey.VCEK,
                hwid_bytes,
                tcb,
                key_tcb or tcb,
                not_before,
                not_after,
                with_product_name=not omit_product_name,
            )
        )

    def vlek_der_for(
        self,
        spls: Mapping[str, int] | TcbParts | TcbVersion,
        *,
        not_before: datetime = _LEAF_NOT_BEFORE,
        not_after: datetime = _LEAF_NOT_AFTER,
    ) -> bytes:
        """A DER VLEK for this simulator's CSP at the given TCB."""
        tcb = _normalise_spls(self.product, spls)
        return _der(self._leaf(SigningKey.VLEK, self.csp_id.encode(), tcb, tcb, not_before, not_after))

    def signer_der(self) -> bytes:
        """This chip's VCEK (or the CSP's VLEK) at its REPORTED_TCB, DER."""
        return _der(self._signer_certificate())

    def _signer_certificate(self) -> x509.Certificate:
        identity = self.hwid if self.signer is SigningKey.VCEK else self.csp_id.encode()
        return self._leaf(
            self.signer, identity, self.reported_tcb, self.reported_tcb, _LEAF_NOT_BEFORE, _LEAF_NOT_AFTER
        )

    def _leaf(  # noqa: PLR0917 - private; every caller passes all of them
        self,
        kind: SigningKey,
        identity: bytes,
        tcb: TcbVersion,
        key_tcb: TcbVersion,
        not_before: datetime,
        not_after: datetime,
        *,
        with_product_name: bool = True,
    ) -> x509.Certificate:
        h = self._h
        cache_key = (kind, identity, tcb.raw, key_tcb.raw, not_before, not_after, with_product_name)
        with h.lock:
            cached = h.issued.get(cache_key)
        if cached is not None:
            return cached
        label = b"VCEK" if kind is SigningKey.VCEK else b"VLEK"
        key = h.derived_key(label, identity, key_tcb)
        parts = tcb.decode(self.product)
        turin = self.product is Product.TURIN
        issuer = h.ask if kind is SigningKey.VCEK else h.asvk
        product_name = _VCEK_PRODUCT_NAME[self.product] if kind is SigningKey.VCEK else self.product.value

        def spl(suffix: int) -> x509.ObjectIdentifier:
            return x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.3.{suffix}")

        # Extension order as in AMD's certificates.
        values: list[tuple[x509.ObjectIdentifier, bytes]] = [(OID_STRUCT_VERSION, _der_integer(1 if turin else 0))]
        if with_product_name:
            values.append((OID_PRODUCT_NAME, _der_ia5(product_name)))
        if turin:
            assert parts.fmc is not None
            values.append((OID_FMC_SPL, _der_integer(parts.fmc)))
        values += [(OID_BL_SPL, _der_integer(parts.bootloader)), (OID_TEE_SPL, _der_integer(parts.tee))]
        if turin:  # AMD's Turin certificates have .3.3 and .3.5-.3.7 but no .3.4
            values.append((OID_SNP_SPL, _der_integer(parts.snp)))
            values += [(spl(n), _der_integer(0)) for n in (5, 6, 7)]
        else:
            values += [(spl(n), _der_integer(0)) for n in (4, 5, 6, 7)]
            values.append((OID_SNP_SPL, _der_integer(parts.snp)))
        values.append((OID_UCODE_SPL, _der_integer(parts.microcode)))
        if kind is SigningKey.VCEK:
            values.append((OID_HWID, identity))  # raw bytes, not DER-wrapped, as AMD ships it
        else:
            values.append((OID_CSP_ID, _der_ia5(identity.decode())))

        # The public CertificateBuilder.serial_number() setter refuses 0, but AMD's VCEKs and
        # VLEKs carry serial 0; the constructor takes the value as given, so the shape matches.
        builder = x509.CertificateBuilder(
            issuer_name=issuer.subject,
            subject_name=_amd_name("SEV-VCEK" if kind is SigningKey.VCEK else "SEV-VLEK"),
            public_key=key.public_key(),
            serial_number=0,
            not_valid_before=not_before,
            not_valid_after=not_after,
        )
        for oid, value in values:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        certificate = _sign_pss(builder, h.ask_key if kind is SigningKey.VCEK else h.asvk_key)
        with h.lock:
            h.issued[cache_key] = certificate
        return certificate

    # --- collateral in the shapes the platform and Azure deliver ---------------------------------

    def vcek_pem_chain(self) -> bytes:
        """Signer (VCEK or VLEK), its ASK/ASVK, the ARK, PEM (what AzCache / the ACI host returns)."""
        return _pem(self._signer_certificate(), self.ca_certificate(), self._h.ark)

    def certificate_table(self) -> bytes:
        """The GHCB certificate table an extended report carries (signer, ASK/ASVK, ARK)."""
        leaf_kind = CertKind.VCEK if self.signer is SigningKey.VCEK else CertKind.VLEK
        return build_certificate_table(
            [
                (leaf_kind, self.signer_der()),
                (CertKind.ASK, _der(self.ca_certificate())),
                (CertKind.ARK, _der(self._h.ark)),
            ]
        )

    def thim_json(self) -> dict[str, str]:
        """Azure THIM ``/metadata/THIM/amd/certification`` body for this chip."""
        return {
            "vcekCert": _pem(self._signer_certificate()).decode("ascii"),
            "tcbm": self.reported_tcb.tcbm(),
            "certificateChain": self.ask_ark_pem().decode("ascii"),
            "cacheControl": "86400",
        }

    # --- reports ----------------------------------------------------------------------------------

    def build_report(
        self,
        report_data: bytes,
        *,
        version: int = 3,
        host_data: bytes = bytes(32),
        measurement: bytes | None = None,
        policy: int | GuestPolicy = 0x30000,
        vmpl: int = 0,
        guest_svn: int = 0,
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
        reported_tcb: TcbVersion | int | None = None,
        chip_id: bytes | None = None,
        mitigation_vector: int | None = None,
    ) -> AttestationReport:
        """The unsigned report the firmware would produce (signature fields zero)."""
        if len(report_data) != 64:
            raise ValueError("report_data must be exactly 64 bytes")
        tcb = self.reported_tcb if reported_tcb is None else reported_tcb
        if isinstance(tcb, int):
            tcb = TcbVersion(tcb)
        if chip_id is None:
            chip_id = self.chip_id if self.signer is SigningKey.VCEK else bytes(64)
        family, model, stepping = _CPUID[self.product] if version >= 3 else (0, 0, 0)
        mit = (1 if mitigation_vector is None else mitigation_vector) if version >= 5 else 0
        return AttestationReport(
            version=version,
            guest_svn=guest_svn,
            policy=policy if isinstance(policy, GuestPolicy) else GuestPolicy(policy),
            family_id=family_id,
            image_id=image_id,
            vmpl=vmpl,
            signature_algo=1,
            current_tcb=tcb,
            platform_info=PlatformInfo(0x25),
            author_key_en=False,
            mask_chip_key=False,
            signing_key=self.signer,
            report_data=bytes(report_data),
            measurement=measurement if measurement is not None else hashlib.sha384(b"simulated guest").digest(),
            host_data=host_data,
            id_key_digest=bytes(48),
            author_key_digest=bytes(48),
            report_id=self.report_id,
            report_id_ma=b"\xff" * 32,
            reported_tcb=tcb,
            cpuid_fam_id=family,
            cpuid_mod_id=model,
            cpuid_step=stepping,
            chip_id=chip_id,
            committed_tcb=tcb,
            current_build=21,
            current_minor=55,
            current_major=1,
            committed_build=21,
            committed_minor=55,
            committed_major=1,
            launch_tcb=tcb,
            launch_mit_vector=mit,
            current_mit_vector=mit,
            signature_r=bytes(72),
            signature_s=bytes(72),
        )

    def sign(self, report: AttestationReport) -> bytes:
        """Sign any report as this chip's firmware would: with the key for its REPORTED_TCB."""
        identity = self.hwid if self.signer is SigningKey.VCEK else self.csp_id.encode()
        label = b"VCEK" if self.signer is SigningKey.VCEK else b"VLEK"
        key = self._h.derived_key(label, identity, report.reported_tcb)
        der = key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        unsigned = report.to_bytes()
        return unsigned[:0x2A0] + r.to_bytes(72, "little") + s.to_bytes(72, "little") + unsigned[0x2A0 + 144 :]

    def sign_report(self, report_data: bytes, **fields: Any) -> bytes:
        """A signed 1184-byte report; ``fields`` are :meth:`build_report`'s keyword arguments."""
        return self.sign(self.build_report(report_data, **fields))
