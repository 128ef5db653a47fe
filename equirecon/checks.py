"""Value-check rules of config keys (torch-free): a test of the value and what it must be.

`equirecon.config.VALUE_CHECKS` pairs the keys of the core sections with these rules; the eval
task specs (`equirecon.eval_tasks`) use them for the keys of their own sections. They live here,
below both, so that neither imports the other to share them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (test, what the value must be); the description may be computed when a check fails (a
# registry's names, which modules may add to).
Rule = tuple[Callable[[Any], bool], str | Callable[[], str]]

# The transforms of data_pipeline/transforms (recon.transform, eval.equivariance.transforms);
# tests/equirecon/test_value_checks.py keeps the two in step.
TRANSFORMS = ("rotation", "translation", "se2", "color", "blur")

# What a geometric g's zero fill shows in training (recon.fill): data_pipeline/transforms/fill.py.
FILLS = ("zero", "disk")


def ge(lo: float) -> Rule:
    return (lambda v: v >= lo), f">= {lo:g}"


def gt(lo: float) -> Rule:
    return (lambda v: v > lo), f"> {lo:g}"


def within(lo: float, hi: float, low_open: bool = False, high_open: bool = False) -> Rule:
    def test(v: float) -> bool:
        return (lo < v if low_open else lo <= v) and (v < hi if high_open else v <= hi)

    return test, f"in {'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"


def pair(lo: float, hi: float) -> Rule:
    return (lambda v: lo <= v[0] <= v[1] <= hi), f"a pair [a, b] with {lo:g} <= a <= b <= {hi:g}"


def open_pair(lo: float, hi: float) -> Rule:
    return (lambda v: lo < v[0] <= v[1] <= hi), f"a pair [a, b] with {lo:g} < a <= b <= {hi:g}"


def one_of(choices: Any) -> Rule:
    options = sorted(choices)
    return (lambda v: v in options), f"one of {options}"


def registered(names: Callable[[], list[str]]) -> Rule:
    """One of the names a registry holds when the check runs."""
    return (lambda v: v in names()), (lambda: f"one of {names()}")


def split_names(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"] (the comma-separated lists of config values)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def name_list(choices: tuple[str, ...]) -> Rule:
    """A non-empty comma-separated list of `choices`."""

    def test(v: str) -> bool:
        names = split_names(v)
        return bool(names) and set(names) <= set(choices)

    return test, f"a comma-separated list of {list(choices)}"


def positive_floats(what: str) -> Rule:
    """A non-empty comma-separated list of numbers > 0 (`what`: "learning rates")."""

    def test(v: str) -> bool:
        try:
            values = [float(t) for t in v.split(",") if t.strip()]
        except ValueError:
            return False
        return bool(values) and all(x > 0 for x in values)

    return test, f"a comma-separated list of {what} > 0"


POSITIVE, NON_NEGATIVE = ge(1), ge(0)
UNIT, PROBABILITY = within(0, 1, low_open=True), within(0, 1)

__all__ = [
    "NON_NEGATIVE",
    "POSITIVE",
    "PROBABILITY",
    "TRANSFORMS",
    "FILLS",
    "UNIT",
    "Rule",
    "ge",
    "gt",
    "name_list",
    "one_of",
    "open_pair",
    "pair",
    "positive_floats",
    "registered",
    "split_names",
    "within",
]
