"""``skr verify`` and ``skr report`` through the real entry point."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from skr.errors import EXIT_OK, EXIT_PLATFORM, EXIT_USAGE, EXIT_VERIFICATION
from skr.shell.cli import build_parser, main
from skr.snp.report import Product
from skr_dev.simulated.amd import SimulatedAmd

ACI_HOST_DATA = "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"


def _aci(real_data: Path) -> list[str]:
    return [
        "verify",
        str(real_data / "csc/milan_v2_aci_report.bin"),
        "--certs",
        str(real_data / "csc/milan_v2_aci_vcek_ask_ark.pem"),
    ]


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    document = json.loads(capsys.readouterr().out)
    assert isinstance(document, dict)
    return document


def test_aci_report_with_base64_policy(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*_aci(real_data), "--policy", str(real_data / "csc/aci_security_policy.base64"), "--json"])
    document = _json(capsys)
    assert code == EXIT_OK
    assert document["ok"] is True and document["failures"] == []
    assert document["product"] == "Milan"
    assert document["roots"] == "AMD"
    assert document["expected"] == {"host_data": ACI_HOST_DATA}
    report = document["report"]
    assert isinstance(report, dict)
    assert report["host_data"] == ACI_HOST_DATA
    assert report["reported_tcb"] == {
        "raw": "0x7308000000000003",
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }
    assert report["policy"]["flags"] == ["SMT", "RESERVED_MBO"]
    assert report["signing_key"] == "VCEK"
    signer = document["signer"]
    assert isinstance(signer, dict)
    assert signer["kind"] == "VCEK" and signer["product_name"] == "Milan-B0" and signer["serial"] == 0
    assert signer["spls"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def test_aci_report_with_decoded_policy(real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decoded = tmp_path / "policy.rego"
    decoded.write_bytes(base64.b64decode((real_data / "csc/aci_security_policy.base64").read_bytes()))
    assert main([*_aci(real_data), "--policy", str(decoded)]) == EXIT_OK
    captured = capsys.readouterr()
    assert f"host_data: {ACI_HOST_DATA}" in captured.out
    assert "result: OK" in captured.out


def test_other_host_data_fails_naming_host_data(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*_aci(real_data), "--host-data", "00" * 32, "--json"])
    document = _json(capsys)
    assert code == EXIT_VERIFICATION
    assert document["ok"] is False
    assert document["verified"] is True  # the signature held; the policy did not
    assert document["error_code"] == "validation_failed"
    failures = document["failures"]
    assert isinstance(failures, list) and len(failures) == 1 and failures[0].startswith("host_data:")

    assert main([*_aci(real_data), "--host-data", "00" * 32]) == EXIT_VERIFICATION
    captured = capsys.readouterr()
    assert "result: FAILED" in captured.out
    assert "error: host_data: expected 0000" in captured.err


def test_wrong_policy_file_fails(real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.rego"
    other.write_text("package other\n")
    assert main([*_aci(real_data), "--policy", str(other)]) == EXIT_VERIFICATION
    assert "host_data" in capsys.readouterr().err


def test_all_checks_listed(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*_aci(real_data), "--host-data", "11" * 32, "--report-data", "22" * 32, "--measurement", "33" * 48])
    assert code == EXIT_VERIFICATION
    err = capsys.readouterr().err
    assert "host_data:" in err and "report_data:" in err and "measurement:" in err


def test_report_data_and_measurement_accept(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    measurement = "51068107cdc7ee3d89c7821b05bca6147eb77b2005ae759050fc049b65a1b0beabc65a9d857acecf23225f5ec76849f5"
    report_data = "ee986ff2bd7e3f22e29f640918627816cf8e23b9d9c312767168eab68c861c71"
    code = main([*_aci(real_data), "--report-data", report_data, "--measurement", measurement, "--product", "Milan"])
    assert code == EXIT_OK, capsys.readouterr().err


def test_vlek_expired_today_valid_then(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["verify", str(real_data / "trustee/vlek_milan_v3_report.bin"), "--certs"]
    args.append(str(real_data / "trustee/vlek_milan.der"))
    assert main([*args, "--at", "2026-11-23T00:00:00Z"]) == EXIT_VERIFICATION
    assert "VLEK expired at 2025-12-10" in capsys.readouterr().err
    # The report was requested at VMPL 1: refused unless the caller accepts that explicitly.
    assert main([*args, "--at", "2025-06-01T00:00:00Z"]) == EXIT_VERIFICATION
    assert "vmpl: expected 0, report has 1" in capsys.readouterr().err
    assert main([*args, "--at", "2025-06-01T00:00:00Z", "--allow-vmpl", "--json"]) == EXIT_OK
    document = _json(capsys)
    assert "vmpl" in document["not_checked"]  # type: ignore[operator]
    assert document["signer"]["kind"] == "VLEK"  # type: ignore[index]
    assert document["signer"]["csp_id"] == "CN=cc-us-east-2.amazonaws.com"  # type: ignore[index]


def test_hex_report_and_split_certificate_files(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "verify",
            str(real_data / "virtee-sev/milan_v2_report.hex"),
            "--certs",
            str(real_data / "virtee-sev/milan_v2_vcek.der"),
            "--certs",
            str(real_data / "amd-roots/milan_ask_ark.pem"),
        ]
    )
    assert code == EXIT_OK, capsys.readouterr().err


def test_turin_json_has_fmc(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "verify",
            str(real_data / "oak/turin_v5_report.bin"),
            "--certs",
            str(real_data / "oak/turin_vcek.der"),
            "--json",
        ]
    )
    document = _json(capsys)
    assert code == EXIT_OK
    assert document["product"] == "Turin"
    assert document["report"]["reported_tcb"]["fmc"] == 0  # type: ignore[index]
    assert document["signer"]["hwid"] == "3b42092f69c656d3"  # type: ignore[index]


def test_simulated_report_is_not_amd_signed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    simulated = SimulatedAmd.create(Product.GENOA)
    report, certs = tmp_path / "report.bin", tmp_path / "table.bin"
    report.write_bytes(simulated.sign_report(bytes(64), version=5))
    certs.write_bytes(simulated.certificate_table())
    assert main(["verify", str(report), "--certs", str(certs), "--json"]) == EXIT_VERIFICATION
    document = _json(capsys)
    assert document["verified"] is False and document["product"] is None
    assert document["failures"] == [
        "VCEK is not signed by the pinned Genoa ASK (AMD): RSASSA-PSS SHA-384 signature does not verify"
    ]
    assert document["report"]["cpuid_product"] == "Genoa"  # type: ignore[index]


def test_forged_vcek(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "verify",
            str(real_data / "trustee/milan_v2_report.bin"),
            "--certs",
            str(real_data / "trustee/negative_forged_vcek_new.der"),
        ]
    )
    assert code == EXIT_VERIFICATION
    assert "not signed by the pinned Milan ASK" in capsys.readouterr().err


def test_malformed_report_file(tmp_path: Path, real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 100)
    code = main(["verify", str(bad), "--certs", str(real_data / "csc/milan_v2_aci_vcek_ask_ark.pem"), "--json"])
    document = _json(capsys)
    assert code == EXIT_VERIFICATION
    assert document["error_code"] == "invalid_report" and document["report"] is None


@pytest.mark.parametrize(
    "extra",
    [
        ["--host-data", "zz"],
        ["--host-data", "00" * 31],
        ["--report-data", "00" * 40],
        ["--policy", "/nonexistent/policy"],
    ],
)
def test_usage_errors(real_data: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_aci(real_data), *extra]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("error: ")


def test_missing_files_are_usage_errors(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "/nonexistent/report", "--certs", str(real_data / "oak/turin_vcek.der")]) == EXIT_USAGE
    assert "cannot read report file" in capsys.readouterr().err
    assert main(["verify", str(real_data / "oak/turin_v5_report.bin"), "--certs", "/nonexistent"]) == EXIT_USAGE
    assert "cannot read certificate file" in capsys.readouterr().err


def test_certs_are_required_and_options_exclusive(real_data: Path) -> None:
    with pytest.raises(SystemExit) as missing:
        main(["verify", str(real_data / "oak/turin_v5_report.bin")])
    assert missing.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as both:
        main([*_aci(real_data), "--host-data", "00" * 32, "--policy", "x"])
    assert both.value.code == EXIT_USAGE


def test_parser_has_subcommands() -> None:
    parser = build_parser()
    assert parser.prog == "skr"
    with pytest.raises(SystemExit):
        parser.parse_args([])


# --- skr report -----------------------------------------------------------------------------------


def test_report_without_sev_snp_names_the_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing_device = tmp_path / "sev-guest"
    code = main(["report", "--configfs-root", str(tmp_path / "tsm"), "--sev-guest", str(missing_device), "--json"])
    assert code == EXIT_PLATFORM
    err = capsys.readouterr().err
    assert str(missing_device) in err and "no SEV-SNP guest interface" in err


def test_report_on_this_machine_uses_the_default_device(capsys: pytest.CaptureFixture[str]) -> None:
    if Path("/dev/sev-guest").exists() or Path("/sys/kernel/config/tsm/report").is_dir():
        pytest.skip("this machine has an SEV-SNP interface")
    assert main(["report", "--runtime-data", base64.b64encode(b"hello").decode()]) == EXIT_PLATFORM
    assert "/dev/sev-guest" in capsys.readouterr().err


def test_report_rejects_bad_runtime_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--runtime-data", "not base64!"]) == EXIT_USAGE
    assert "base64" in capsys.readouterr().err


def test_module_entry_point(real_data: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "skr", *_aci(real_data), "--host-data", ACI_HOST_DATA],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "result: OK" in result.stdout


def test_bad_certificate_file_still_prints_json(
    real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "certs.pem"
    garbage.write_bytes(b"not a certificate")
    code = main(["verify", str(real_data / "csc/milan_v2_aci_report.bin"), "--certs", str(garbage), "--json"])
    document = _json(capsys)
    assert code == EXIT_VERIFICATION
    assert document["verified"] is False and document["error_code"] == "verification_failed"
    assert document["report"]["host_data"] == ACI_HOST_DATA  # type: ignore[index]


def _debug(real_data: Path) -> list[str]:
    return [
        "verify",
        str(real_data / "go-sev-guest/milan_v2_debug_report.bin"),
        "--certs",
        str(real_data / "go-sev-guest/milan_v2_debug_vcek.der"),
    ]


def test_debug_guest_is_refused_unless_allowed(real_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13 item 7: this real debug report used to print ``result: OK`` and exit 0."""
    assert main(_debug(real_data)) == EXIT_VERIFICATION
    captured = capsys.readouterr()
    assert "result: FAILED" in captured.out
    assert "policy flags: SMT RESERVED_MBO DEBUG" in captured.out
    assert "debug: allowed, migration agent: not allowed, SMT: allowed, VMPL: 0, signing key: VCEK" in captured.out
    assert "check host_data: not checked" in captured.out
    assert "check require_no_debug: not checked" not in captured.out
    assert "policy.debug: the guest policy allows debugging" in captured.err

    assert main([*_debug(real_data), "--allow-debug"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "result: OK" in captured.out
    assert "check require_no_debug: not checked" in captured.out  # the OK says what it did not check
    assert "check vmpl: not checked" not in captured.out


def test_verify_subprocess_exit_code_for_debug_guest(real_data: Path) -> None:
    """The real entry point, as the issue ran it."""
    completed = subprocess.run(
        [sys.executable, "-m", "skr", *_debug(real_data)], capture_output=True, text=True, check=False, timeout=120
    )
    assert completed.returncode == EXIT_VERIFICATION, completed.stderr
    assert "DEBUG" in completed.stdout and "result: FAILED" in completed.stdout
