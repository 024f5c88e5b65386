"""The Speckle plane's schema: ``speckle.graphql``, the status union's sandbox variant, resolvers.

Rules this module keeps:

* Client documents are executed against ``engine/sandbox/speckle.graphql`` (names and
  nullability from specklesystems/speckle-server) with graphql-core, so a wrong field, type or
  variable is refused as the real server refuses it.
* **The status type.** On the real server ``statusData`` is a union of the six status types,
  which refuses ``statusData { status }`` — yet the seed's StartFileIngestion document selects
  exactly that. The sandbox therefore declares ``ModelIngestionStatusData`` as an interface
  (``status``) that all six implement, so the seed's documents and fragment-style documents both
  run (sandbox rule); ``strict_status_union=True`` restores the real union to catch non-portable
  documents. The SDL must hold that interface exactly once and six ``implements`` of it.
* Abstract types resolve by the ``__typename`` every status object carries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final

from graphql import (
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
)
from graphql import (
    build_schema as build_sdl_schema,
)

from engine.sandbox.speckle.records import Info

__all__ = ["SCHEMA_PATH", "Resolver", "build_schema", "sdl"]

Resolver = Callable[..., Any]

SCHEMA_PATH: Final = Path(__file__).parent.with_name("speckle.graphql")

_STATUS_INTERFACE: Final = (
    "interface ModelIngestionStatusData {\n  status: ModelIngestionStatus!\n}\n"
)
_STATUS_UNION: Final = (
    "union ModelIngestionStatusData =\n"
    "  | ModelIngestionCancelledStatus\n"
    "  | ModelIngestionFailedStatus\n"
    "  | ModelIngestionInvalidStatus\n"
    "  | ModelIngestionProcessingStatus\n"
    "  | ModelIngestionQueuedStatus\n"
    "  | ModelIngestionSuccessStatus\n"
)
_IMPLEMENTS_STATUS: Final = " & ModelIngestionStatusData"


@cache
def sdl(strict_status_union: bool) -> str:
    """The SDL; with ``strict_status_union`` the status interface becomes the real union."""
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    if strict_status_union:
        if text.count(_STATUS_INTERFACE) != 1 or text.count(_IMPLEMENTS_STATUS) != 6:
            raise RuntimeError("speckle.graphql no longer has the expected status interface")
        text = text.replace(_IMPLEMENTS_STATUS, "").replace(_STATUS_INTERFACE, _STATUS_UNION)
    return text


def build_schema(
    strict_status_union: bool, resolvers: Mapping[str, Mapping[str, Resolver]]
) -> GraphQLSchema:
    """A fresh schema with ``resolvers`` (type name → field name → resolver) installed."""
    schema = build_sdl_schema(sdl(strict_status_union))
    for type_name, fields in resolvers.items():
        gql_type = schema.get_type(type_name)
        if not isinstance(gql_type, GraphQLObjectType):  # pragma: no cover - SDL is fixed
            raise TypeError(f"{type_name} is not an object type in speckle.graphql")
        for field_name, resolver in fields.items():
            gql_type.fields[field_name].resolve = resolver
    for abstract in schema.type_map.values():
        if isinstance(abstract, GraphQLUnionType | GraphQLInterfaceType):
            abstract.resolve_type = _typename_of
    return schema


def _typename_of(value: Any, _info: Info, _abstract: Any) -> str | None:
    return value.get("__typename") if isinstance(value, Mapping) else None
