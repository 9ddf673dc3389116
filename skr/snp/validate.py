"""Field policy over a verified SEV-SNP report: does this report describe the guest we expect?

:mod:`skr.snp.verify` answers "did AMD hardware sign this?"; this module answers "is it the right
guest, in an acceptable state?". :class:`ValidationOptions` is a frozen, documented policy in which
every ``None`` (or ``False`` for the ``require_*`` flags) means "not checked". An options object
that checks nothing is allowed on purpose: ``skr verify`` without options verifies the signature
and chain only. Callers that release secrets should at least pin ``host_data`` (or
``measurement``) and ``report_data``.

:func:`validate_report` runs every check and raises one
:class:`~skr.errors.ValidationFailedError` listing *all* failures, so an operator fixes a policy in
one round trip instead of one failure at a time.

Host data and policies: on Confidential ACI and AKS kata-cc, HOST_DATA is the SHA-256 of the
*decoded* policy (the ``ccePolicy`` / ``io.katacontainers.config.agent.policy`` annotation is
base64 text). :func:`host_data_for_policy` reads either form; see its docstring for the rule.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

from skr.errors import ConfigError, ValidationFailedError
from skr.primitives.encoding import b64_decode_lenient_padding
from skr.snp.report import AttestationReport, Product

__all__ = [
    "MAX_POLICY_SIZE",
    "MinimumTcb",
    "PolicyEncoding",
    "ValidationOptions",
    "host_data_for_policy",
    "validate_report",
]

MAX_POLICY_SIZE: Final = 1024 * 1024  # real ccePolicies are a few KiB to a few hundred KiB
_BASE64_LINE: Final = re.compile(rb"[A-Za-z0-9+/]*={0,2}")

PolicyEncoding = Literal["auto", "base64", "raw"]


def host_data_for_policy(policy: bytes, encoding: PolicyEncoding = "auto") -> bytes:
    """HOST_DATA for a confidential-container policy: SHA-256 of the policy *document*.

    ``encoding="auto"`` (the default) applies one rule: after trimming surrounding whitespace, if
    every line consists only of base64 characters (``A-Z a-z 0-9 + /``, ``=`` padding) and the
    whole decodes strictly, the document is the decoded bytes (the ACI ``ccePolicy`` / kata
    annotation form, also ``base64 -w 76`` output); otherwise the file is the raw policy (Rego text)
    and its bytes are hashed exactly as they are, trailing newline included. Real Rego never passes
    the base64 test: it contains spaces, quotes and braces. Pass ``"base64"`` or ``"raw"`` to
    skip the guess.

    Raises:
        ConfigError: the policy is empty, too large, or not base64 when ``"base64"`` is demanded.
    """
    if not policy:
        raise ConfigError("the policy is empty")
    if len(policy) > MAX_POLICY_SIZE:
        raise ConfigError(f"the policy is {len(policy)} bytes; the limit is {MAX_POLICY_SIZE}")
    if encoding == "raw":
        return hashlib.sha256(policy).digest()
    decoded = _strict_base64(policy)
    if decoded is None:
        if encoding == "base64":
            raise ConfigError("the policy is not valid base64")
        return hashlib.sha256(policy).digest()
    return hashlib.sha256(decoded).digest()


def _strict_base64(text: bytes) -> bytes | None:
    lines = text.strip().splitlines()
    if not lines or not all(_BASE64_LINE.fullmatch(line.strip(b"\r")) for line in lines):
        return None
    try:
        decoded = b64_decode_lenient_padding(b"".join(line.strip(b"\r") for line in lines))
    except ValueError:
        return None
    return decoded or None


@dataclass(frozen=True, slots=True)
class MinimumTcb:
    """Lowest acceptable security patch level per TCB component; ``None`` = not checked.

    Compared against REPORTED_TCB (the TCB the VCEK certifies). ``fmc`` exists on Turin only and is
    ignored for Milan and Genoa, which have no FMC, so one policy can serve a mixed fleet.
    """

    bootloader: int | None = None
    tee: int | None = None
    snp: int | None = None
    microcode: int | None = None
    fmc: int | None = None

    def __post_init__(self) -> None:
        for name in ("bootloader", "tee", "snp", "microcode", "fmc"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 0xFF:
                raise ConfigError(f"minimum {name} SPL {value} is outside 0..255")


def _check_length(name: str, value: bytes | None, allowed: Iterable[int]) -> None:
    if value is None:
        return
    sizes = tuple(allowed)
    if not isinstance(value, bytes) or len(value) not in sizes:
        raise ConfigError(f"{name} must be {' or '.join(map(str, sizes))} bytes")


@dataclass(frozen=True, slots=True)
class ValidationOptions:
    """What a verified report must say. Every ``None`` / ``False`` field is not checked.

    * ``report_data``: 64 bytes compared exactly, or 32 bytes meaning "the first 32 bytes equal
      this and the last 32 are zero" (skr binds ``sha256(runtime data) || 32 zero bytes``).
    * ``host_data`` (32 bytes), ``measurement`` (48), ``family_id`` / ``image_id`` (16): exact.
    * ``minimum_tcb``: per component, against REPORTED_TCB (see :class:`MinimumTcb`).
    * ``vmpl``: the exact VMPL the report was requested at (0..3).
    * ``require_no_debug``: the guest policy must not allow debugging.
    * ``require_no_migration_agent``: the guest policy must not allow a migration agent.
    * ``minimum_guest_svn``: GUEST_SVN at least this.
    * ``allowed_chip_ids``: CHIP_ID must be one of these; 64-byte entries compare exactly, 8-byte
      entries (Turin hwIDs) match ``entry || 56 zero bytes``.
    * ``minimum_build`` / ``minimum_version``: the firmware's CURRENT_BUILD and
      (CURRENT_MAJOR, CURRENT_MINOR) at least these.
    """

    report_data: bytes | None = None
    host_data: bytes | None = None
    measurement: bytes | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    minimum_tcb: MinimumTcb | None = None
    vmpl: int | None = None
    require_no_debug: bool = False
    require_no_migration_agent: bool = False
    minimum_guest_svn: int | None = None
    allowed_chip_ids: frozenset[bytes] | None = field(default=None)
    minimum_build: int | None = None
    minimum_version: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _check_length("report_data", self.report_data, (64, 32))
        _check_length("host_data", self.host_data, (32,))
        _check_length("measurement", self.measurement, (48,))
        _check_length("family_id", self.family_id, (16,))
        _check_length("image_id", self.image_id, (16,))
        if self.vmpl is not None and not 0 <= self.vmpl <= 3:
            raise ConfigError(f"vmpl {self.vmpl} is outside 0..3")
        if self.minimum_guest_svn is not None and not 0 <= self.minimum_guest_svn <= 0xFFFFFFFF:
            raise ConfigError("minimum_guest_svn must fit in 32 bits")
        if self.allowed_chip_ids is not None:
            if not isinstance(self.allowed_chip_ids, frozenset):
                raise ConfigError("allowed_chip_ids must be a frozenset of bytes")
            for chip_id in self.allowed_chip_ids:
                _check_length("each allowed chip id", chip_id, (64, 8))
        if self.minimum_build is not None and not 0 <= self.minimum_build <= 0xFF:
            raise ConfigError("minimum_build must be 0..255")
        if self.minimum_version is not None and (
            len(self.minimum_version) != 2 or not all(0 <= part <= 0xFF for part in self.minimum_version)
        ):
            raise ConfigError("minimum_version must be (major, minor), each 0..255")

    def checks_anything(self) -> bool:
        """Whether any field is set (an empty policy is allowed, e.g. for verify-only use)."""
        return self != ValidationOptions()

    def with_policy(self, policy: bytes, encoding: PolicyEncoding = "auto") -> ValidationOptions:
        """A copy whose ``host_data`` is :func:`host_data_for_policy` of ``policy``."""
        return replace(self, host_data=host_data_for_policy(policy, encoding))

    @classmethod
    def with_policy_file(
        cls, path: str | Path, encoding: PolicyEncoding = "auto", **options: object
    ) -> ValidationOptions:
        """Options whose ``host_data`` comes from a policy file (base64 or raw, see above).

        Raises:
            ConfigError: the file cannot be read, is too large, or is empty.
        """
        try:
            with Path(path).open("rb") as handle:
                policy = handle.read(MAX_POLICY_SIZE + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from None
        return cls(**options).with_policy(policy, encoding)  # type: ignore[arg-type]


def validate_report(report: AttestationReport, options: ValidationOptions, product: Product) -> None:
    """Check ``report`` (already verified) against ``options``; check everything, then fail once.

    Raises:
        ValidationFailedError: with one message per failed check, each naming its field.
    """
    failures: list[str] = []

    def differs(name: str, actual: bytes, expected: bytes | None) -> None:
        if expected is not None and actual != expected:
            failures.append(f"{name}: expected {expected.hex()}, report has {actual.hex()}")

    if options.report_data is not None:
        expected = options.report_data.ljust(64, b"\0")
        differs("report_data", report.report_data, expected)
    differs("host_data", report.host_data, options.host_data)
    differs("measurement", report.measurement, options.measurement)
    differs("family_id", report.family_id, options.family_id)
    differs("image_id", report.image_id, options.image_id)

    if options.minimum_tcb is not None:
        parts = report.reported_tcb.decode(product)
        minimum = options.minimum_tcb
        for component, floor, actual in (
            ("bootloader", minimum.bootloader, parts.bootloader),
            ("tee", minimum.tee, parts.tee),
            ("snp", minimum.snp, parts.snp),
            ("microcode", minimum.microcode, parts.microcode),
            ("fmc", minimum.fmc, parts.fmc),
        ):
            if floor is not None and actual is not None and actual < floor:
                failures.append(f"reported_tcb.{component}: {actual} is below the minimum {floor}")

    if options.vmpl is not None and report.vmpl != options.vmpl:
        failures.append(f"vmpl: expected {options.vmpl}, report has {report.vmpl}")
    if options.require_no_debug and report.policy.debug:
        failures.append("policy.debug: the guest policy allows debugging (the host can read guest memory)")
    if options.require_no_migration_agent and report.policy.migrate_ma:
        failures.append("policy.migrate_ma: the guest policy allows a migration agent")
    if options.minimum_guest_svn is not None and report.guest_svn < options.minimum_guest_svn:
        failures.append(f"guest_svn: {report.guest_svn} is below the minimum {options.minimum_guest_svn}")
    if options.allowed_chip_ids is not None and not any(
        report.chip_id == allowed.ljust(64, b"\0") for allowed in options.allowed_chip_ids
    ):
        failures.append(f"chip_id: {report.chip_id.hex()} is not among the {len(options.allowed_chip_ids)} allowed")
    if options.minimum_build is not None and report.current_build < options.minimum_build:
        failures.append(f"current_build: {report.current_build} is below the minimum {options.minimum_build}")
    if options.minimum_version is not None:
        actual_version = (report.current_major, report.current_minor)
        if actual_version < options.minimum_version:
            wanted = ".".join(map(str, options.minimum_version))
            failures.append(f"current_version: {report.current_major}.{report.current_minor} is below {wanted}")

    if failures:
        raise ValidationFailedError(failures)
