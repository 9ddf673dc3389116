"""The ``skr`` command line: one argparse parser with a subcommand per task.

This is the only module that configures logging. Every deliberate failure is an
:class:`~skr.errors.SkrError`; :func:`main` prints its message and returns the exit code the one
table in :mod:`skr.errors` assigns (0 ok, 2 usage, 3 platform, 7 verification, ...).

Subcommands so far:

* ``skr verify REPORT --certs FILE...`` verifies a report against AMD's pinned roots and, with
  ``--host-data`` / ``--policy`` / ``--report-data`` / ``--measurement``, validates its fields.
  Certificates are required: PEM, concatenated DER, or the GHCB certificate table of an extended
  report (``--certs`` may repeat, e.g. a VCEK file plus an ASK/ARK file). Nothing is fetched.
  A debug, migratable or VMPL>0 guest fails unless ``--allow-debug`` / ``--allow-migration`` /
  ``--allow-vmpl``; the text output lists the policy flags and every check not requested.
* ``skr report`` asks this machine's SEV-SNP platform for a report. It never falls back to a
  simulated platform: without SEV-SNP it fails with the platform exit code.

Each subcommand registers itself through a ``_add_<name>`` function that sets ``handler``, so
later commands (serve, release, dev, doctor) slot in beside these.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from skr import __version__
from skr.errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    BadRequestError,
    ConfigError,
    SkrError,
    ValidationFailedError,
    VerificationError,
    exit_code_for,
)
from skr.primitives.encoding import b64_decode_lenient_padding, b64_encode
from skr.shell.config import RELEASE_FORMATS, SETTINGS, Settings, load_settings
from skr.snp.report import REPORT_SIZE, AttestationReport, Product, parse_report

if TYPE_CHECKING:
    from cryptography import x509

    from skr.snp.validate import ValidationOptions
    from skr.snp.verify import VerifiedAttestation

# Per-command imports: building the parser (``skr --help``) needs only the settings table and the
# report's product names. Each handler imports what its command runs, so ``--help`` and ``verify``
# never load aiohttp or the Azure SDKs and ``release`` never loads the HTTP server
# (tests/shell/test_import_budget.py holds each command to an allow-list of modules).

__all__ = ["build_parser", "exit_now", "main"]

_logger = logging.getLogger("skr.shell.cli")

_MAX_REPORT_FILE = 64 * 1024
_MAX_RUNTIME_DATA = 1024 * 1024

Handler = Callable[[argparse.Namespace, TextIO], int]


# --- helpers --------------------------------------------------------------------------------------


def _read_file(path: str, limit: int, what: str) -> bytes:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {limit} bytes")
    return data


def _hex_argument(value: str, name: str) -> bytes:
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        raise BadRequestError(f"{name} is not hex") from None


def _report_bytes(data: bytes) -> bytes:
    """A report file is the raw 1184 bytes or their hex text (as some tools store it)."""
    if len(data) == REPORT_SIZE:
        return data
    text = data.strip()
    if len(text) == 2 * REPORT_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    return data  # parse_report names the size problem


def _certificate_json(certificate: x509.Certificate) -> dict[str, Any]:
    from skr.snp.vcek import serial_zero_warnings_suppressed  # noqa: PLC0415 - per-command import

    with serial_zero_warnings_suppressed():  # AMD VCEKs have serial 0
        serial = certificate.serial_number
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": serial,
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }


def _signer_json(verified: VerifiedAttestation) -> dict[str, Any]:
    ext = verified.extensions
    out = _certificate_json(verified.signer)
    out.update(
        {
            "kind": verified.signer_kind.name,
            "product_name": ext.product_name,
            "struct_version": ext.struct_version,
            "spls": {name: value for name, value in ext.spls().items() if value is not None},
            "hwid": ext.hwid.hex() if ext.hwid is not None else None,
            "csp_id": ext.csp_id,
        }
    )
    return out


def _print_json(document: dict[str, Any], out: TextIO) -> None:
    json.dump(document, out, indent=2, sort_keys=False)
    out.write("\n")


def _parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- skr verify -----------------------------------------------------------------------------------


def _add_verify(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="verify an SEV-SNP report against AMD's pinned roots and check its fields",
        description=(
            "Verify REPORT (1184 raw bytes or their hex) with the VCEK/VLEK in --certs against the "
            "AMD roots built into skr, then check the fields given. Exit 0 only if everything holds."
        ),
    )
    parser.add_argument("report", metavar="REPORT", help="the attestation report file")
    parser.add_argument(
        "--certs",
        action="append",
        required=True,
        metavar="FILE",
        help="VCEK/VLEK (+ ASK/ARK) as PEM, DER or a GHCB certificate table; may repeat",
    )
    host = parser.add_mutually_exclusive_group()
    host.add_argument("--host-data", metavar="HEX", help="expected HOST_DATA (32 bytes hex)")
    host.add_argument(
        "--policy",
        metavar="FILE",
        help="confidential-container policy (base64 as in ccePolicy, or raw Rego); HOST_DATA = sha256(policy)",
    )
    parser.add_argument(
        "--policy-encoding",
        choices=("auto", "base64", "raw"),
        default="auto",
        help="how to read --policy (default: auto = base64 if it strictly decodes, else raw)",
    )
    parser.add_argument(
        "--report-data", metavar="HEX", help="expected REPORT_DATA: 64 bytes, or 32 bytes followed by zeros"
    )
    parser.add_argument("--measurement", metavar="HEX", help="expected MEASUREMENT (48 bytes hex)")
    parser.add_argument(
        "--product",
        choices=[product.value for product in Product],
        help="expected product; must agree with the report and certificate (never needed)",
    )
    parser.add_argument(
        "--at",
        type=_parse_time,
        metavar="TIME",
        help="verify certificate validity at this ISO 8601 time (default: now)",
    )
    parser.add_argument(
        "--allow-debug", action="store_true", help="accept a guest whose policy allows debugging (not confidential)"
    )
    parser.add_argument(
        "--allow-migration", action="store_true", help="accept a guest whose policy allows a migration agent"
    )
    parser.add_argument("--allow-vmpl", action="store_true", help="accept a report requested at a VMPL other than 0")
    parser.add_argument("--json", action="store_true", help="print every field and the result as JSON")
    parser.set_defaults(handler=_run_verify)


def _verify_options(args: argparse.Namespace) -> ValidationOptions:
    """The checks ``skr verify`` applies. Why the defaults refuse: an OK must mean "fit for secrets",
    and a debug guest (the host can read its memory), a migratable one (a migration agent can move
    its memory out) or a report from VMPL>0 (a less privileged layer spoke) is not, unless the
    caller says so explicitly with ``--allow-*``."""
    from skr.snp.validate import ValidationOptions  # noqa: PLC0415 - per-command import

    options = ValidationOptions(
        host_data=_hex_argument(args.host_data, "--host-data") if args.host_data else None,
        report_data=_hex_argument(args.report_data, "--report-data") if args.report_data else None,
        measurement=_hex_argument(args.measurement, "--measurement") if args.measurement else None,
        require_no_debug=not args.allow_debug,
        require_no_migration_agent=not args.allow_migration,
        vmpl=None if args.allow_vmpl else 0,
    )
    if args.policy:
        policy = _read_file(args.policy, 1024 * 1024, "policy file")
        options = options.with_policy(policy, args.policy_encoding)
    return options


def _run_verify(args: argparse.Namespace, out: TextIO) -> int:
    from skr.snp.validate import validate_report  # noqa: PLC0415 - per-command import
    from skr.snp.verify import (  # noqa: PLC0415
        MAX_CERTIFICATE_INPUT,
        MAX_CERTIFICATES,
        TrustedRoots,
        load_certificates,
        verify_attestation,
    )

    options = _verify_options(args)
    certificate_files = [_read_file(path, MAX_CERTIFICATE_INPUT, "certificate file") for path in args.certs]
    now = args.at or datetime.now(UTC)
    report_bytes = _report_bytes(_read_file(args.report, _MAX_REPORT_FILE, "report file"))

    report: AttestationReport | None = None
    verified: VerifiedAttestation | None = None
    error: SkrError | None = None
    failures: list[str] = []
    try:
        report = parse_report(report_bytes)
        certificates: list[x509.Certificate] = []
        for data in certificate_files:
            certificates.extend(load_certificates(data))
        if len(certificates) > MAX_CERTIFICATES:
            raise VerificationError(f"more than {MAX_CERTIFICATES} certificates given")
        verified = verify_attestation(
            report,
            certificates,
            trusted=TrustedRoots.amd(),
            now=now,
            product=Product(args.product) if args.product else None,
        )
        validate_report(verified.report, options, verified.product)
    except ValidationFailedError as exc:
        error, failures = exc, list(exc.failures)
    except VerificationError as exc:
        error, failures = exc, [exc.message]

    product = verified.product if verified is not None else None
    not_checked = _not_checked(options)
    if args.json:
        _print_json(
            {
                "ok": error is None,
                "verified": verified is not None,
                "failures": failures,
                "error_code": error.code if error is not None else None,
                "product": product.value if product is not None else None,
                "roots": verified.roots_name if verified is not None else None,
                "verification_time": now.isoformat(),
                "chip_id_masked": verified.chip_id_masked if verified is not None else None,
                "signer": _signer_json(verified) if verified is not None else None,
                "expected": {
                    name: value.hex()
                    for name, value in (
                        ("host_data", options.host_data),
                        ("report_data", options.report_data),
                        ("measurement", options.measurement),
                    )
                    if value is not None
                },
                "not_checked": not_checked,
                "report": report.as_dict(product or report.product_from_cpuid()) if report is not None else None,
            },
            out,
        )
    else:
        if report is not None:
            out.write(f"report version {report.version}, VMPL {report.vmpl}, signing key {report.signing_key.name}\n")
            if verified is not None:
                parts = report.reported_tcb.decode(verified.product).as_dict()
                out.write(f"product: {verified.product.value} (roots: {verified.roots_name})\n")
                out.write("reported_tcb: " + " ".join(f"{k}={v}" for k, v in parts.items()) + "\n")
            out.write(f"host_data: {report.host_data.hex()}\n")
            out.write(f"measurement: {report.measurement.hex()}\n")
            out.write(f"report_data: {report.report_data.hex()}\n")
            policy = report.policy
            out.write(f"policy flags: {' '.join(policy.flags()) or '(none)'}\n")
            out.write(
                f"debug: {_yes_no(policy.debug)}, migration agent: {_yes_no(policy.migrate_ma)}, "
                f"SMT: {_yes_no(policy.smt_allowed)}, VMPL: {report.vmpl}, "
                f"signing key: {report.signing_key.name}\n"
            )
        for name in not_checked:
            out.write(f"check {name}: not checked\n")
        out.write("result: OK\n" if error is None else "result: FAILED\n")
        for failure in failures:
            sys.stderr.write(f"error: {failure}\n")
    return EXIT_OK if error is None else exit_code_for(error)


def _yes_no(flag: bool) -> str:
    return "allowed" if flag else "not allowed"


def _not_checked(options: ValidationOptions) -> list[str]:
    """Every validation the caller did not ask for, so an OK is never read as more than it says."""
    return [
        item.name
        for item in dataclasses.fields(options)
        if getattr(options, item.name) is None or getattr(options, item.name) is False
    ]


# --- skr report -----------------------------------------------------------------------------------


def _add_report(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="get an attestation report from this machine's SEV-SNP platform",
        description=(
            "Request a report at VMPL 0 with REPORT_DATA = sha256(runtime data) || 32 zero bytes "
            "(64 zero bytes without --runtime-data) through configfs-tsm or /dev/sev-guest. Needs "
            "SEV-SNP guest hardware; never simulated."
        ),
    )
    parser.add_argument("--runtime-data", metavar="B64", help="runtime data to bind (standard base64)")
    parser.add_argument("--out", metavar="FILE", help="write the raw 1184-byte report here")
    parser.add_argument("--certs-out", metavar="FILE", help="write the certificate table (if any) here")
    parser.add_argument("--json", action="store_true", help="print the parsed report as JSON")
    parser.add_argument("--configfs-root", metavar="DIR", help="configfs-tsm report directory (default: the kernel's)")
    parser.add_argument("--sev-guest", metavar="PATH", help="sev-guest device (default: /dev/sev-guest)")
    parser.set_defaults(handler=_run_report)


def _report_data_for(runtime_b64: str | None) -> bytes:
    if runtime_b64 is None:
        return bytes(64)
    if len(runtime_b64) > _MAX_RUNTIME_DATA:
        raise BadRequestError(f"--runtime-data is longer than {_MAX_RUNTIME_DATA} characters")
    try:
        runtime = b64_decode_lenient_padding(runtime_b64)
    except ValueError:
        raise BadRequestError("--runtime-data is not standard base64") from None
    return hashlib.sha256(runtime).digest() + bytes(32)


def _write_file(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _run_report(args: argparse.Namespace, out: TextIO) -> int:
    from skr.snp.configfs import DEFAULT_TSM_REPORT_ROOT  # noqa: PLC0415 - the device layer loads only when used
    from skr.snp.device import DEFAULT_SEV_GUEST_PATH  # noqa: PLC0415
    from skr.snp.provider import select_provider  # noqa: PLC0415

    report_data = _report_data_for(args.runtime_data)
    provider = select_provider(
        configfs_root=args.configfs_root or DEFAULT_TSM_REPORT_ROOT,
        sev_guest_path=args.sev_guest or DEFAULT_SEV_GUEST_PATH,
    )
    evidence = provider.get_report(report_data, vmpl=0, with_certificates=True)
    report = parse_report(evidence.report)
    if args.out:
        _write_file(args.out, evidence.report)
    if args.certs_out and evidence.certificates:
        _write_file(args.certs_out, evidence.certificates)
    if args.json:
        _print_json(
            {
                "provider": evidence.provider,
                "report": report.as_dict(report.product_from_cpuid()),
                "report_base64": b64_encode(evidence.report),
                "certificate_table_bytes": len(evidence.certificates),
            },
            out,
        )
    elif not args.out:
        out.write(b64_encode(evidence.report) + "\n")
    return EXIT_OK


# --- serve / release / doctor / dev --------------------------------------------------------------


def _add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per setting (flags win over SKR_* variables); ``names`` limits the set."""
    group = parser.add_argument_group("configuration (flag, environment variable, default)")
    for setting in SETTINGS:
        if names is not None and setting.name not in names:
            continue
        if setting.parse is bool or setting.default is False:
            group.add_argument(
                setting.flag,
                dest=setting.name,
                action="store_const",
                const="true",
                default=None,
                help=f"{setting.help} [{setting.env}]",
            )
        else:
            default = ",".join(setting.default) if isinstance(setting.default, tuple) else setting.default
            group.add_argument(
                setting.flag,
                dest=setting.name,
                default=None,
                metavar="VALUE",
                help=f"{setting.help} [{setting.env}; default {default!r}]",
            )


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings({s.name: getattr(args, s.name, None) for s in SETTINGS})


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the sidecar (localhost HTTP API)",
        description="Run the sidecar. Fails at start-up without an SEV-SNP device.",
    )
    _add_settings_flags(parser)
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio  # noqa: PLC0415 - per-command import

    from skr.shell.logs import configure_logging  # noqa: PLC0415 - per-command import
    from skr.shell.serve import run_serve  # noqa: PLC0415

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_serve(settings))
    return EXIT_OK


_RELEASE_SETTINGS = tuple(
    s.name for s in SETTINGS if s.name not in ("host", "port", "unsafe_bind", "max_body_bytes", "released_key_ttl")
)


def _add_release(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "release",
        help="init-container mode: release keys into files, then exit",
        description="Release each --kid and write it atomically (mode 0600) under --out. "
        "Retries transient failures until --timeout; exit 0 only when every key is written.",
    )
    parser.add_argument("--kid", action="append", required=True, help="key name or name/version (repeatable)")
    parser.add_argument("--out", required=True, help="directory (one file per key) or a file for a single key")
    parser.add_argument("--format", choices=sorted(RELEASE_FORMATS), default="jwk", help="file format (default jwk)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument(
        "--enc",
        default="CKM_RSA_AES_KEY_WRAP",
        choices=["CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384"],
    )
    _add_settings_flags(parser, _RELEASE_SETTINGS)
    parser.set_defaults(handler=_run_release)


def _run_release(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio  # noqa: PLC0415 - per-command import

    from skr.shell.initcontainer import ReleaseJob, parse_kids, run_release  # noqa: PLC0415 - per-command import
    from skr.shell.logs import configure_logging  # noqa: PLC0415

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    job = ReleaseJob(kids=parse_kids(args.kid), out=Path(args.out), fmt=args.format, timeout=args.timeout, enc=args.enc)
    return asyncio.run(run_release(settings, job))


def _add_doctor(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("doctor", help="diagnose the environment, one line per check")
    _add_settings_flags(parser)
    parser.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio  # noqa: PLC0415 - per-command import

    from skr.shell.doctor import Status, run_doctor  # noqa: PLC0415 - per-command import

    checks = asyncio.run(run_doctor(_settings(args)))
    for check in checks:
        out.write(check.line() + "\n")
    # 1 when any check failed, so `skr doctor` can gate a deployment script.
    return EXIT_OK if all(c.status is not Status.FAIL for c in checks) else EXIT_INTERNAL


def _add_dev(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="SIMULATED platform + Azure emulators + the sidecar on loopback, for development",
        description="Start a simulated SEV-SNP platform, emulators of MAA, Key Vault, Managed HSM, Entra ID, "
        "IMDS and AMD KDS, and the sidecar, all on 127.0.0.1. NOT A TEE: for development and tests only.",
    )
    parser.add_argument("--port", type=int, default=8080, help="sidecar port (default 8080; 0 picks a free one)")
    parser.add_argument("--state-file", help="write the stack's URLs, CA file, identities and keys as JSON")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help="switch on an emulator fault, e.g. maa.attest:rate_limit (repeatable)",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="release the demo keys through the sidecar over HTTP, print them, and exit",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=_run_dev)


def _run_dev(args: argparse.Namespace, out: TextIO) -> int:
    result: int = _load_stand_in("skr_dev.devstack").main(args, out)
    return result


def _load_stand_in(module: str) -> Any:
    """Load a development stand-in (``skr-dev``, a separate distribution) for an explicit developer command.

    Production installs and the container image do not contain it, so its absence is a usage error
    that says how to get it, never a fallback. Loaded by name, at run time, only here: production
    paths never load the stand-ins (tests/test_import_graph.py checks it).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (exc.name == "skr_dev" or exc.name.startswith("skr_dev.")):
            raise
        raise ConfigError(
            "this developer command needs the stand-ins (simulated platform and Azure emulators), which a production "
            "install does not contain: from a clone of skr, run pip install -e ./devstack"
        ) from None


def _add_bench(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="SIMULATED: measure the design.md quality bars against loopback emulators",
        description="Run the sidecar against the Azure emulators on a SIMULATED SEV-SNP platform with injected "
        "latencies (MAA 150 ms, Entra 100 ms, Key Vault 100 ms); print each figure, its goal and the ratio. "
        "NOT A TEE: for development only.",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure and sample as JSON")
    parser.add_argument(
        "--runs", type=int, default=None, metavar="N", help="independent runs (default 5; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="1 run, fewer samples, a 5,000-request soak")
    parser.add_argument(
        "--soak-requests", type=int, default=None, metavar="N", help="soak length (default 50000; 0 skips the soak)"
    )
    parser.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace, out: TextIO) -> int:
    result: int = _load_stand_in("skr_dev.bench").main(args, out)
    return result


# --- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="skr", description="SEV-SNP attestation and secure key release")
    parser.add_argument("--version", action="version", version=f"skr {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeat for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(subparsers)
    _add_release(subparsers)
    _add_report(subparsers)
    _add_verify(subparsers)
    _add_dev(subparsers)
    _add_bench(subparsers)
    _add_doctor(subparsers)
    return parser


# The Go sidecar's single-dash flags that skr accepts as they are (deployments pass them unchanged).
_GO_FLAGS: Final = {"-server_type": "--server-type", "-port": "--port"}


def _go_flags(argv: Sequence[str]) -> list[str]:
    """Rewrite ``-server_type grpc`` / ``-server_type=grpc`` (and ``-port``) to skr's flags."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        flag = _GO_FLAGS.get(name)
        out.append(f"{flag}{sep}{value}" if flag else arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (see :mod:`skr.errors`)."""
    parser = build_parser()
    args = parser.parse_args(_go_flags(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code = _dispatch(args)
    if argv is None and args.command == "release":
        exit_now(code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        return handler(args, sys.stdout)
    except SkrError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: a typed message, not a traceback
        _logger.debug("unexpected failure", exc_info=True)
        sys.stderr.write(f"internal error: {type(exc).__name__} (run with -vv for details)\n")
        return EXIT_INTERNAL


def exit_now(code: int) -> None:
    """End a finished ``skr release`` without interpreter teardown.

    By now the event loop has closed every session and each key file was fsynced, renamed and its
    directory fsynced (:func:`skr.shell.initcontainer.write_atomically`), so nothing is left that
    finalisation would make durable; tearing down ~800 modules only costs CPU (about 0.15 s, i.e.
    1.5 s of wall time at the init container's 100m limit) before the pod may start. Only for the
    real command line (``argv is None``): a caller of :func:`main` keeps its interpreter.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
