"""The Import API's schema: ``matterport.graphql`` and the coercions of its custom scalars.

Rules this module keeps:

* Documents are executed with graphql-core against ``engine/sandbox/matterport.graphql``
  (written from Matterport's Import API guide), so a wrong field, argument or variable type is
  refused as the real server would.
* **Long** is a signed 64-bit integer: sizes are bytes, as ``Long``, so files above 2 GiB work.
  Booleans, non-integral numbers and values outside the range are refused; an integral float
  from JSON is taken as the integer.
* **DateTime** is written ``YYYY-MM-DDTHH:MM:SSZ`` in UTC and read as ISO-8601 text.
* Each plane builds its own schema object, so resolvers installed on one never leak into another.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import graphql
from graphql import GraphQLError, GraphQLScalarType, IntValueNode, ValueNode

__all__ = ["LONG_MAX", "LONG_MIN", "SDL_PATH", "build_schema", "timestamp"]

SDL_PATH: Final = Path(__file__).parent.with_name("matterport.graphql")
LONG_MIN: Final = -(2**63)
LONG_MAX: Final = 2**63 - 1


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _coerce_long(value: Any) -> int:
    if isinstance(value, bool):
        raise GraphQLError(f"Long cannot represent a boolean: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise GraphQLError(f"Long cannot represent a non-integer value: {value!r}")
    if not LONG_MIN <= value <= LONG_MAX:
        raise GraphQLError(f"Long cannot represent {value}: outside the signed 64-bit range")
    return value


def _parse_long_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> int:
    if not isinstance(node, IntValueNode):
        raise GraphQLError(f"Long cannot represent a non-integer value: {graphql.print_ast(node)}")
    return _coerce_long(int(node.value))


def _serialize_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return timestamp(value)
    raise GraphQLError(f"DateTime cannot represent {value!r}")


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise GraphQLError(f"DateTime must be ISO-8601 text, not {value!r}")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise GraphQLError(f"DateTime cannot represent {value!r}") from exc


def build_schema() -> graphql.GraphQLSchema:
    """A fresh schema from the SDL, its scalars' coercions installed (no resolvers yet)."""
    schema = graphql.build_schema(SDL_PATH.read_text(encoding="utf-8"))
    _install_scalar(schema, "Long", _coerce_long, _coerce_long, _parse_long_literal)
    _install_scalar(schema, "DateTime", _serialize_datetime, _parse_datetime, None)
    return schema


def _install_scalar(
    schema: graphql.GraphQLSchema,
    name: str,
    output: Callable[[Any], Any],
    value: Callable[[Any], Any],
    literal: Callable[[ValueNode, dict[str, Any] | None], Any] | None,
) -> None:
    """Give an SDL-built scalar its coercions, in place (the schema keeps the same object).

    graphql-core 3.2 reads ``serialize``/``parse_value``/``parse_literal``; 3.3 also keeps copies
    as ``coerce_output_value``/``coerce_input_value``; both are set where they exist.
    """
    scalar = schema.type_map[name]
    assert isinstance(scalar, GraphQLScalarType)
    hooks: list[tuple[tuple[str, ...], Callable[..., Any] | None]] = [
        (("serialize", "coerce_output_value"), output),
        (("parse_value", "coerce_input_value"), value),
        (("parse_literal",), literal),
    ]
    for attributes, function in hooks:
        if function is None:
            continue
        for attribute in attributes:
            if hasattr(scalar, attribute):
                setattr(scalar, attribute, function)
