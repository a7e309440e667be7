"""Rules beside their fields: a dataclass field states its type, choices and bounds where it is
defined (:func:`field`), and one loop (:func:`check_fields`) checks them all, raising
:class:`~uncertainty_robust.errors.ConfigError` with one line that names the key and what is
allowed. Cross-field rules stay explicit in the record's own ``validate``.

After MadryLab/robustness's ``defaults.py`` (one row per option builds the CLI and fills defaults).
:class:`~uncertainty_robust.config.TrialConfig` and the sweep's typed sections
(``cluster.settings``: resources, search, slurm) use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from .errors import ConfigError

Choices = Union[tuple, Callable[[], Any]]  # a tuple, or a callable returning the allowed values


@dataclass(frozen=True)
class Rule:
    """What a value may be. ``kind``: "number", "int", "choice", "bool", "str", "list" (of ``each``)
    or None (no check). ``optional``: None is allowed. Lists: ``nonempty``, ``unique`` and ``each``
    (the rule of every element)."""

    kind: Optional[str] = None
    lo: float = float("-inf")
    hi: float = float("inf")
    lo_open: bool = False
    choices: Optional[Choices] = None
    optional: bool = False
    each: Optional[Rule] = None
    nonempty: bool = False
    unique: bool = False

    def allowed(self) -> tuple:
        c = self.choices() if callable(self.choices) else self.choices
        return tuple(c or ())

    def describe(self) -> str:
        if self.kind in ("number", "int"):
            what = "a number" if self.kind == "number" else "an integer"
            return f"{what} in {self._interval()}"
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.allowed()))
        if self.kind == "list" and self.each is not None:
            return f"a list, each {self.each.describe()}"
        return {"bool": "true or false", "str": "a string", "list": "a list"}.get(self.kind or "", "a value")

    def _interval(self) -> str:
        fmt = (lambda v: f"{int(v)}") if self.kind == "int" else (lambda v: f"{v:g}")
        return f"{'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}]"

    def check(self, key: str, value: Any) -> None:
        if value is None:
            if self.optional:
                return
            raise ConfigError(key, f"expected {self.describe()}, got None")
        if self.kind in ("number", "int"):
            integer = self.kind == "int"
            if (
                isinstance(value, bool)
                or not isinstance(value, int if integer else (int, float))
                or value != value
            ):
                raise ConfigError(key, f"expected {self.describe()}, got {value!r}")
            if value > self.hi or value < self.lo or (self.lo_open and value == self.lo):
                raise ConfigError(key, f"{value!r} is out of range {self._interval()}")
        elif self.kind == "choice":
            if value not in self.allowed():
                raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, self.allowed()))}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(key, f"expected true or false, got {value!r}")
        elif self.kind == "str":
            if not isinstance(value, str):
                raise ConfigError(key, f"expected a string, got {value!r}")
        elif self.kind == "list":
            self._check_list(key, value)

    def _check_list(self, key: str, value: Any) -> None:
        each = self.each.describe() if self.each is not None else "values"
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list of {each}, got {value!r}")
        if self.nonempty and not value:
            raise ConfigError(key, f"empty list; give at least one of {each}")
        if self.each is not None:
            for i, v in enumerate(value):
                self.each.check(f"{key}[{i}]", v)
        if self.unique:
            seen: list = []
            for v in value:
                if any(_same(v, s) for s in seen):
                    raise ConfigError(key, f"{value!r} lists {v!r} twice; give each value once")
                seen.append(v)


def _same(a: Any, b: Any) -> bool:
    """Equal, or two numbers within 1e-9 (0.1 and 0.1000000001 are one epsilon)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9
    return a == b


# ------------------------------------------------------------------------------ rule builders
def number(lo: float, hi: float, lo_open: bool = False, optional: bool = False) -> Rule:
    return Rule("number", lo, hi, lo_open, optional=optional)


def integer(lo: int, hi: int, optional: bool = False) -> Rule:
    return Rule("int", lo, hi, optional=optional)


def choice(choices: Choices, optional: bool = False) -> Rule:
    return Rule("choice", choices=choices, optional=optional)


def flag() -> Rule:
    return Rule("bool")


def text(optional: bool = False) -> Rule:
    return Rule("str", optional=optional)


def list_of(
    each: Optional[Rule] = None, nonempty: bool = False, unique: bool = False, optional: bool = False
) -> Rule:
    return Rule("list", each=each, nonempty=nonempty, unique=unique, optional=optional)


def field(default=dataclasses.MISSING, *, rule: Optional[Rule] = None, factory=None, help: str = "", **meta):
    """A dataclass field with its rule and its other metadata (``help``, and whatever the record's
    own schema needs: a grid key, a row flag, a version)."""
    metadata = {"rule": rule, "help": help, **meta}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_fields(obj, key: Callable[[str], str] = lambda name: name) -> None:
    """Check every field of the dataclass ``obj`` against its rule; ``key`` maps a field name to the
    key an error names (a grid's ``resources.workers``)."""
    for f in dataclasses.fields(obj):
        rule = f.metadata.get("rule")
        if rule is not None:
            rule.check(key(f.name), getattr(obj, f.name))
