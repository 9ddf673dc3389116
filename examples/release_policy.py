#!/usr/bin/env python3
"""Generate a Key Vault / Managed HSM key release policy for an skr workload.

The policy lets a key out only to an SEV-SNP workload that

* MAA attested (``authority`` = the MAA instance; Key Vault compares it with the token's ``iss``),
* runs Microsoft's utility VM (``x-ms-compliance-status``: ``azure-compliant-uvm`` on Confidential
  ACI, ``azure-signed-katacc-uvm`` on AKS kata-cc),
* was started with exactly your security policy (``x-ms-sevsnpvm-hostdata`` = SHA-256 of the
  base64-DECODED policy: the ARM template's ``ccePolicy`` on ACI, the pod annotation
  ``io.katacontainers.config.agent.policy`` on AKS),
* and is not debuggable.

Host data can come from ``--host-data HEX`` or from ``--policy-file``, which accepts the base64
policy itself, an ARM template with ``ccePolicy`` filled in (after ``az confcom acipolicygen``), or
a Kubernetes YAML carrying the policy annotation (after ``az confcom katapolicygen``).

    python3 release_policy.py --platform aks --maa-endpoint sharedeus.eus.attest.azure.net \\
        --policy-file aks-kata-cc/sidecar.yaml > release-policy.json

Only the standard library is needed. ``create_key.py`` imports this module.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

COMPLIANCE_STATUS = {"aci": "azure-compliant-uvm", "aks": "azure-signed-katacc-uvm"}
KATA_POLICY_ANNOTATION = "io.katacontainers.config.agent.policy"
MAX_POLICY_FILE = 8 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class PolicyInputError(ValueError):
    """The policy file or host data cannot be used (the message says why)."""


def host_data_of(policy_b64: str) -> str:
    """HOST_DATA for a security policy: hex SHA-256 of the base64-decoded policy bytes."""
    text = "".join(policy_b64.split())
    if not text:
        raise PolicyInputError("the security policy is empty (generate it with az confcom first)")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise PolicyInputError("the security policy is not standard base64") from None
    return hashlib.sha256(raw).hexdigest()


def _cce_policies(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ccePolicy" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_cce_policies(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_cce_policies(item))
    return found


def _annotation_values(text: str) -> list[str]:
    # katapolicygen writes the annotation as one plain (or quoted) scalar on one line.
    pattern = re.compile(r"^\s*['\"]?" + re.escape(KATA_POLICY_ANNOTATION) + r"['\"]?\s*:\s*(.*?)\s*$", re.MULTILINE)
    return [match.group(1).strip("'\"") for match in pattern.finditer(text)]


def policy_from_file(path: Path) -> str:
    """The base64 security policy held by ``path`` (raw base64, ARM template, or Kubernetes YAML)."""
    data = path.read_bytes()
    if len(data) > MAX_POLICY_FILE:
        raise PolicyInputError(f"{path} is larger than {MAX_POLICY_FILE} bytes")
    text = data.decode("utf-8")
    candidates: list[str]
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            candidates = _cce_policies(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PolicyInputError(f"{path} is not valid JSON: {exc}") from None
        what = "ccePolicy"
    elif KATA_POLICY_ANNOTATION in text:
        candidates = _annotation_values(text)
        what = KATA_POLICY_ANNOTATION
    else:
        return text
    candidates = [candidate for candidate in candidates if candidate]
    if not candidates:
        raise PolicyInputError(f"{path} has no {what} value yet: run az confcom on it first")
    if len(set(candidates)) > 1:
        raise PolicyInputError(f"{path} holds {len(set(candidates))} different policies; pass one with --host-data")
    return candidates[0]


def normalise_host_data(value: str) -> str:
    host_data = value.strip().lower()
    if not _HEX64.match(host_data):
        raise PolicyInputError("host data must be 64 hex characters (a SHA-256 digest)")
    return host_data


def authority_of(maa_endpoint: str) -> str:
    """``https://<host>`` for an MAA endpoint given as a host or a URL."""
    endpoint = maa_endpoint.strip().rstrip("/")
    if not endpoint:
        raise PolicyInputError("the MAA endpoint is empty")
    return endpoint if endpoint.startswith("https://") else f"https://{endpoint}"


def build_release_policy(*, maa_endpoint: str, host_data: str, compliance_status: str) -> dict[str, Any]:
    """The release policy (grammar version 1.0.0) binding a key to one attested workload."""
    return {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": authority_of(maa_endpoint),
                "allOf": [
                    {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                    {"claim": "x-ms-compliance-status", "equals": compliance_status},
                    {"claim": "x-ms-sevsnpvm-hostdata", "equals": normalise_host_data(host_data)},
                    {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
                ],
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", choices=sorted(COMPLIANCE_STATUS), default="aci", help="sets the UVM claim")
    parser.add_argument("--maa-endpoint", required=True, help="MAA instance, e.g. sharedeus.eus.attest.azure.net")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy-file", type=Path, help="base64 policy, ARM template or Kubernetes YAML")
    source.add_argument("--host-data", help="SHA-256 of the decoded policy, 64 hex characters")
    parser.add_argument("--compliance-status", help="override the x-ms-compliance-status value")
    parser.add_argument("--out", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    try:
        host_data = host_data_of(policy_from_file(args.policy_file)) if args.policy_file else args.host_data
        policy = build_release_policy(
            maa_endpoint=args.maa_endpoint,
            host_data=host_data,
            compliance_status=args.compliance_status or COMPLIANCE_STATUS[args.platform],
        )
    except (PolicyInputError, OSError, UnicodeDecodeError) as exc:
        print(f"release_policy: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(policy, indent=2) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
