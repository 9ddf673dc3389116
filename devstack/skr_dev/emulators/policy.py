"""Key release policy engine for the Key Vault / Managed HSM emulator (azure-facts §3).

Why: the emulator must refuse releases exactly where the real service would, and say which claim
failed so a developer can fix their policy or their platform before going to Azure. Parsing is
strict and bounded; evaluation is a pure, deterministic function of (policy, claims, issuer).

Grammar accepted (azure-facts §3.1)::

    {"version": "1.0.0" | "0.2" | absent,
     "anyOf": [{"authority": "<issuer URL>", "allOf" | "anyOf": [<condition>, ...]}, ...]}
    <condition> := {"claim": "<dotted.name>", "equals": <scalar>}
                 | {"claim": "<dotted.name>", "condition": "equals", "value": <scalar>}   (legacy)
                 | {"allOf": [<condition>, ...]} | {"anyOf": [<condition>, ...]}

Decision on the other documented operators (``notEquals``, ``less``, ``lessOrEquals``,
``greater``, ``greaterOrEquals``, ``exists``): they are REJECTED at import with a clear 400
message. Whether Key Vault enforces them is UNCONFIRMED (the grammar lists them; the prose says
only ``equals`` is allowed), and an emulator that silently accepted a policy the service might
evaluate differently would give false confidence. Failing loudly is the safe choice.

Matching semantics (azure-facts §3.2):
- ``authority`` vs the token's ``iss``: one trailing slash ignored; scheme and host compared
  case-insensitively (host case: UNCONFIRMED), the path exactly.
- Claim names navigate JSON objects with dots; arrays are not navigated.
- ``equals`` is type-coercing: booleans stringify to ``true``/``false``, integers to decimal, and
  the strings are compared; two hex strings compare case-insensitively (UNCONFIRMED).
- A missing claim fails; object or array claim values never match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from skr.errors import BadRequestError

__all__ = [
    "ACCEPTED_VERSIONS",
    "MAX_POLICY_BYTES",
    "AllOf",
    "AnyOf",
    "Authority",
    "ClaimEquals",
    "Condition",
    "PolicyDecision",
    "PolicyFailure",
    "ReleasePolicy",
    "canonical_json",
    "evaluate",
    "parse_policy",
]

MAX_POLICY_BYTES = 64 * 1024
MAX_DEPTH = 16
"""Maximum nesting of allOf/anyOf groups below an authority."""
MAX_CONDITIONS = 512
MAX_AUTHORITIES = 64
MAX_CLAIM_NAME = 256
MAX_VALUE_CHARS = 4096
ACCEPTED_VERSIONS = frozenset({"1.0.0", "0.2"})
UNSUPPORTED_OPERATORS = frozenset({"notEquals", "less", "lessOrEquals", "greater", "greaterOrEquals", "exists"})
_HEX = re.compile(r"[0-9a-fA-F]+")

Scalar = str | bool | int | float


@dataclass(frozen=True, slots=True)
class ClaimEquals:
    """``{"claim": name, "equals": value}`` (or its legacy spelling)."""

    claim: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class AllOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    conditions: tuple[Condition, ...]


Condition = ClaimEquals | AllOf | AnyOf


@dataclass(frozen=True, slots=True)
class Authority:
    """One issuer and the rule its tokens must satisfy."""

    authority: str
    rule: AllOf | AnyOf


@dataclass(frozen=True, slots=True)
class ReleasePolicy:
    version: str | None
    authorities: tuple[Authority, ...]


@dataclass(frozen=True, slots=True)
class PolicyFailure:
    """Why a token does not meet the policy; ``claim`` is None when no authority matched."""

    claim: str | None
    reason: str

    def message(self) -> str:
        if self.claim is None:
            return self.reason
        return f"claim '{self.claim}' {self.reason}"


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: bool
    failure: PolicyFailure | None = None


# --- parsing -----------------------------------------------------------------------------------------


def _bad(message: str) -> BadRequestError:
    return BadRequestError(f"Key Release Policy: {message}")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def _load(data: bytes | str) -> Any:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not isinstance(raw, bytes | bytearray):
        raise _bad("policy data must be bytes")
    if len(raw) > MAX_POLICY_BYTES:
        raise _bad(f"policy is larger than {MAX_POLICY_BYTES} bytes")
    try:
        return json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("policy is not valid UTF-8 JSON (duplicate members and NaN are refused)") from None


class _Budget:
    """Counts conditions across the whole policy so a wide policy cannot exhaust memory or time."""

    __slots__ = ("remaining",)

    def __init__(self) -> None:
        self.remaining = MAX_CONDITIONS

    def spend(self) -> None:
        self.remaining -= 1
        if self.remaining < 0:
            raise _bad(f"policy has more than {MAX_CONDITIONS} conditions")


def _scalar(value: Any, *, where: str) -> Scalar:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise _bad(f"{where}: value is longer than {MAX_VALUE_CHARS} characters")
        return value
    raise _bad(f"{where}: the value must be a string, number or boolean")


def _claim_name(value: Any, *, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_NAME:
        raise _bad(f"{where}: 'claim' must be a non-empty string of at most {MAX_CLAIM_NAME} characters")
    if any(part == "" for part in value.split(".")):
        raise _bad(f"{where}: claim name {value!r} has an empty path segment")
    return value


def _group(items: Any, kind: str, *, where: str, depth: int, budget: _Budget) -> tuple[Condition, ...]:
    if not isinstance(items, list) or not items:
        raise _bad(f"{where}: '{kind}' must be a non-empty list")
    return tuple(
        _condition(item, where=f"{where}.{kind}[{index}]", depth=depth, budget=budget)
        for index, item in enumerate(items)
    )


def _condition(node: Any, *, where: str, depth: int, budget: _Budget) -> Condition:
    if depth > MAX_DEPTH:
        raise _bad(f"{where}: conditions are nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise _bad(f"{where}: a condition must be an object")
    budget.spend()
    keys = set(node)
    if keys == {"allOf"}:
        return AllOf(_group(node["allOf"], "allOf", where=where, depth=depth + 1, budget=budget))
    if keys == {"anyOf"}:
        return AnyOf(_group(node["anyOf"], "anyOf", where=where, depth=depth + 1, budget=budget))
    if "claim" not in keys:
        raise _bad(f"{where}: a condition needs 'claim' or exactly one of 'allOf'/'anyOf'")
    claim = _claim_name(node["claim"], where=where)
    operators = keys - {"claim"}
    if operators == {"equals"}:
        return ClaimEquals(claim, _scalar(node["equals"], where=where))
    if operators == {"condition", "value"}:
        operator = node["condition"]
        if operator == "equals":
            return ClaimEquals(claim, _scalar(node["value"], where=where))
        if isinstance(operator, str) and operator in UNSUPPORTED_OPERATORS:
            raise _unsupported(operator, where)
        raise _bad(f"{where}: unknown condition operator")
    unsupported = sorted(operators & UNSUPPORTED_OPERATORS)
    if unsupported:
        raise _unsupported(unsupported[0], where)
    if not operators:
        raise _bad(f"{where}: condition on claim {claim!r} has no operator (use 'equals')")
    raise _bad(f"{where}: condition on claim {claim!r} has unexpected members {sorted(operators)!r}")


def _unsupported(operator: str, where: str) -> BadRequestError:
    return _bad(
        f"{where}: operator '{operator}' is not supported by this emulator; only 'equals' is "
        "(whether Key Vault enforces other operators is UNCONFIRMED)"
    )


def _authority_url(value: Any, *, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise _bad(f"{where}: 'authority' must be a non-empty string")
    parts = urlsplit(value)
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise _bad(f"{where}: 'authority' must be an https URL")
    return value


def parse_policy(data: bytes | str) -> ReleasePolicy:
    """Parse and validate release-policy JSON; raises BadRequestError with a message saying why."""
    document = _load(data)
    if not isinstance(document, dict):
        raise _bad("policy must be a JSON object")
    unknown = set(document) - {"version", "anyOf"}
    if unknown:
        raise _bad(f"unexpected top-level members {sorted(unknown)!r}")
    version = document.get("version")
    if version is not None and (not isinstance(version, str) or version not in ACCEPTED_VERSIONS):
        raise _bad('\'version\' must be "1.0.0" or "0.2" (or be absent)')
    authorities = document.get("anyOf")
    if not isinstance(authorities, list) or not authorities:
        raise _bad("top level must have a non-empty 'anyOf' list of authorities")
    if len(authorities) > MAX_AUTHORITIES:
        raise _bad(f"policy has more than {MAX_AUTHORITIES} authorities")
    budget = _Budget()
    parsed: list[Authority] = []
    for index, node in enumerate(authorities):
        where = f"anyOf[{index}]"
        if not isinstance(node, dict):
            raise _bad(f"{where}: an authority entry must be an object")
        authority = _authority_url(node.get("authority"), where=where)
        groups = set(node) - {"authority"}
        if groups not in ({"allOf"}, {"anyOf"}):
            raise _bad(f"{where}: an authority needs exactly one of 'allOf' or 'anyOf' and nothing else")
        kind = "allOf" if "allOf" in groups else "anyOf"
        conditions = _group(node[kind], kind, where=where, depth=1, budget=budget)
        rule: AllOf | AnyOf = AllOf(conditions) if kind == "allOf" else AnyOf(conditions)
        parsed.append(Authority(authority=authority, rule=rule))
    return ReleasePolicy(version=version, authorities=tuple(parsed))


def canonical_json(data: bytes | str) -> bytes:
    """The policy re-serialised compactly, member order kept (what KV stores and echoes)."""
    return json.dumps(_load(data), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- evaluation --------------------------------------------------------------------------------------


def _issuer_key(value: str) -> tuple[str, str, str]:
    parts = urlsplit(value.strip())
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    return parts.scheme.lower(), parts.netloc.lower(), path


_MISSING = object()


def _lookup(claims: Mapping[str, Any], name: str) -> Any:
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _stringify(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 140 else text[:137] + "..."


def _check(condition: Condition, claims: Mapping[str, Any]) -> PolicyFailure | None:
    if isinstance(condition, ClaimEquals):
        actual = _lookup(claims, condition.claim)
        expected = _stringify(condition.value)
        if actual is _MISSING or actual is None:
            return PolicyFailure(condition.claim, f"is missing; the policy requires {expected!r}")
        if isinstance(actual, dict | list):
            return PolicyFailure(condition.claim, "is an object or array, which never matches 'equals'")
        if not isinstance(actual, str | bool | int | float):
            return PolicyFailure(condition.claim, "has an unsupported type")
        got = _stringify(actual)
        if got == expected or (_HEX.fullmatch(got) and _HEX.fullmatch(expected) and got.lower() == expected.lower()):
            return None
        return PolicyFailure(condition.claim, f"is {_shown(actual)}; the policy requires {expected!r}")
    failures = []
    for child in condition.conditions:
        failure = _check(child, claims)
        if isinstance(condition, AllOf) and failure is not None:
            return failure
        if isinstance(condition, AnyOf):
            if failure is None:
                return None
            failures.append(failure)
    if isinstance(condition, AnyOf):
        first = failures[0]
        return PolicyFailure(first.claim, f"{first.reason} (no alternative of an 'anyOf' matched)")
    return None


def evaluate(policy: ReleasePolicy, claims: Mapping[str, Any], issuer: str) -> PolicyDecision:
    """Decide whether a verified token (its ``claims`` and ``iss``) meets ``policy``.

    Allowed when any authority equal to ``issuer`` has its rule satisfied. Otherwise the failure
    names the first failing claim of the first authority matching the issuer (for an ``anyOf``,
    the first alternative's failure), or says that no authority matches the issuer.
    """
    wanted = _issuer_key(issuer)
    first_failure: PolicyFailure | None = None
    for authority in policy.authorities:
        if _issuer_key(authority.authority) != wanted:
            continue
        failure = _check(authority.rule, claims)
        if failure is None:
            return PolicyDecision(allowed=True)
        first_failure = first_failure or failure
    if first_failure is None:
        first_failure = PolicyFailure(
            None, f"no authority in the key release policy matches the token issuer {_shown(issuer)}"
        )
    return PolicyDecision(allowed=False, failure=first_failure)
