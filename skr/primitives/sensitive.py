"""A wrapper that keeps secrets out of logs, error messages and reprs."""

from __future__ import annotations

from typing import Generic, NoReturn, TypeVar

__all__ = ["Sensitive"]

T = TypeVar("T")


class Sensitive(Generic[T]):
    """Holds a secret value; ``repr``/``str``/``format`` never show it.

    Call :meth:`reveal` at the one place that must use the value. Pickling is refused so the
    value cannot leave the process by accident.
    """

    __slots__ = ("_label", "_value")

    def __init__(self, value: T, label: str = "secret") -> None:
        self._value = value
        self._label = label

    def reveal(self) -> T:
        """Return the secret. Use only where the value is consumed, never to log it."""
        return self._value

    def __repr__(self) -> str:
        return f"<{self._label}: redacted>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Sensitive values cannot be pickled")

    # Equality and hashing are deliberately those of ``object``: identity, not value. Value
    # equality would need a value hash to stay consistent (equal → equal hash), and hashing a
    # secret puts a function of it into every dict/set that holds the wrapper; ``==`` on secrets is
    # also not constant-time, and many wrapped values (JWK dicts) cannot be hashed at all. A caller
    # that must compare two secrets reveals them at that one place and uses ``hmac.compare_digest``.
    __eq__ = object.__eq__
    __hash__ = object.__hash__
