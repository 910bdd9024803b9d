"""The route table's JSON codec: dataclasses to JSON and back, strictly (every field present, no
unknown field, exact types), so a bad push is refused with the field it names."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields, is_dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


class RouteTableError(ValueError):
    """A route table that does not parse or check (the proxy answers 400 with this message)."""


def encode(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(tp: Any, value: Any, path: str) -> Any:
    """JSON -> the typed value, strictly: every field present, no unknown field, exact types."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return decode(inner, value, path)
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, dict):
            raise RouteTableError(f"{path}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        names = [f.name for f in fields(tp)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise RouteTableError(f"{path}: unknown field {unknown[0]!r}")
        missing = [n for n in names if n not in value]
        if missing:
            raise RouteTableError(f"{path}.{missing[0]}: required field is missing")
        return tp(**{n: decode(hints[n], value[n], f"{path}.{n}") for n in names})
    if origin is tuple:
        if not isinstance(value, list):
            raise RouteTableError(f"{path}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RouteTableError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(decode(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise RouteTableError(f"{path}: expected an object, got {type(value).__name__}")
        return {k: decode(args[1], v, f"{path}[{k!r}]") for k, v in value.items()}
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RouteTableError(f"{path}: expected an integer, got {json.dumps(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RouteTableError(f"{path}: expected a string, got {json.dumps(value)}")
        return value
    raise TypeError(f"cannot decode {tp!r}")  # a field type this codec does not know: a bug here


# --------------------------------------------------------------------------------------------------
# Building the tables (the control plane's push)
