"""Config values converted to their fields' declared types, as HfArgumentParser converts command-line strings.

`coerce(value, tp)` handles Optional / unions, Literal, enums (an `Enum | str` field takes the enum's values),
lists, tuples and dicts of typed items, bools ("true"/"false"/"yes"/"no"), ints (refusing 2.5, taking 3.0 or
"1e3") and floats (taking YAML 1.1's string "1e-5"). A value that fits no member raises TypeMismatch.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing

_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}
_UNION_TYPES = (typing.Union, types.UnionType)


class TypeMismatch(Exception):
    """A value does not fit a type (config.convert_value turns it into a ConfigError naming the field)."""


def _is_enum(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _union_members(tp) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in _UNION_TYPES else (tp,)


def describe_type(tp) -> str:
    """The declared type in words, for error messages ("a number", "true or false", "one of a, b")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNION_TYPES:
        members = [a for a in args if a is not str] if any(_is_enum(a) for a in args) else list(args)
        return " or ".join(dict.fromkeys(describe_type(a) for a in members))
    if origin is typing.Literal:
        return "one of " + ", ".join(
            "null" if a is None else str(a).lower() if isinstance(a, bool) else str(a) for a in args
        )
    if _is_enum(tp):
        return "one of " + ", ".join(str(member.value) for member in tp)
    if origin in (list, tuple, set) or tp in (list, tuple, set):
        return f"a list (each {describe_type(args[0])})" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeMismatch


def _to_number(value, whole: bool):
    """int or float from a number or a numeric string; `whole` refuses 2.5 (and keeps 3.0 as 3)."""
    if isinstance(value, bool):
        raise TypeMismatch  # True is an int to Python, not a size to a user
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise TypeMismatch from None
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeMismatch
    if whole:
        if isinstance(value, float) and not value.is_integer():
            raise TypeMismatch
        return int(value)
    return value  # an int stays an int: TrainingArguments treats warmup_steps >= 1 as a step count


def coerce(value, tp):
    """`value` as type `tp` (see the module docstring), or TypeMismatch."""
    if tp is None or tp is typing.Any or tp is object or isinstance(tp, (typing.TypeVar, str)):
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNION_TYPES:
        return _coerce_union(value, args)
    if origin is typing.Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        raise TypeMismatch
    if tp is type(None):
        if value is None:
            return None
        raise TypeMismatch
    if value is None:
        raise TypeMismatch
    if _is_enum(tp):
        if isinstance(value, tp):
            return value
        choices = {member.value for member in tp}
        if isinstance(value, str) and value in choices:
            return value  # the plain value: TrainingArguments converts it itself
        if value is False and "no" in choices:
            return "no"  # YAML 1.1 reads an unquoted `save_strategy: no` as false
        raise TypeMismatch
    if tp is bool:
        return _to_bool(value)
    if tp in (int, float):
        return _to_number(value, whole=tp is int)
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch  # YAML reads an unquoted yes/no/on/off as true/false
    container = origin or tp
    if container in (list, tuple, set):
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TypeMismatch
            return tuple(coerce(v, a) for v, a in zip(value, args))
        item = args[0] if args else None
        return container(coerce(v, item) for v in value)
    if container is dict:
        if not isinstance(value, dict):
            raise TypeMismatch
        return {k: coerce(v, args[1]) for k, v in value.items()} if len(args) == 2 else value
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise TypeMismatch
    return value


def _coerce_union(value, members: tuple):
    if value is None and type(None) in members:
        return None
    concrete = [m for m in members if m is not type(None)]
    enums = [m for m in concrete if _is_enum(m)]
    if enums and str in concrete:
        concrete = [m for m in concrete if m is not str]  # as HfArgumentParser: `Enum | str` takes the enum's values
    elif isinstance(value, str) and str in concrete:
        return value  # a string where a string is allowed is never parsed into something else
    for member in concrete:
        try:
            return coerce(value, member)
        except TypeMismatch:
            continue
    raise TypeMismatch


@functools.cache
def field_types(cls) -> dict:
    """Declared types of a dataclass's fields. A subclass that redeclares an enum-valued field as plain `str`
    (UnlearnConfig.lr_scheduler_type) keeps its parent's choices, so a typo is named before construction."""
    try:
        hints = dict(typing.get_type_hints(cls))
    except (NameError, TypeError):
        return {}
    for base in cls.__mro__[1:]:
        try:
            base_hints = typing.get_type_hints(base) if dataclasses.is_dataclass(base) else {}
        except (NameError, TypeError):
            continue
        for name, tp in base_hints.items():
            if hints.get(name) is str and any(_is_enum(m) for m in _union_members(tp)):
                hints[name] = tp
    return hints
