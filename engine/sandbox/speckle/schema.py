"""The Speckle plane's schema: ``speckle.graphql`` cut per API version, and the resolvers installed.

Rules this module keeps:

* Client documents are executed against ``engine/sandbox/speckle.graphql`` with graphql-core, so
  a wrong field, type or variable is refused as the real server refuses it. The file holds
  sections (``# ==== section: NAME``); each API takes :data:`SECTIONS` of them: ``v3`` the
  ingestion API, ``v2`` the public server since 2.25.8 (presigned uploads, ``startFileImport``,
  ``Model.uploads``), ``legacy`` the public server before it (file uploads only through REST).
* **The status type.** ``statusData`` is the real server's union of the six status types, which
  refuses ``statusData { status }``. ``status_interface=True`` swaps it for an interface that all
  six implement (the sandbox's old lenient schema), so the seed's own StartFileIngestion document
  executes. The v3 section must hold the union exactly once and six ``implements
  HasModelIngestionStatus``.
* Abstract types resolve by the ``__typename`` every status object carries.
"""

from __future__ import annotations

import re
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

__all__ = ["SCHEMA_PATH", "SECTIONS", "Resolver", "build_schema", "sdl"]

Resolver = Callable[..., Any]

SCHEMA_PATH: Final = Path(__file__).parent.with_name("speckle.graphql")

SECTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "v3": ("common", "v3"),
    "v2": ("common", "presigned", "uploads"),
    "legacy": ("common", "uploads"),
}

_MARKER: Final = re.compile(r"^# ==== section: (\S+)\n", re.MULTILINE)
_STATUS_UNION: Final = re.compile(r"^union ModelIngestionStatusData =\n(?:  \| \w+\n)+", re.M)
_STATUS_INTERFACE: Final = (
    "interface ModelIngestionStatusData {\n  status: ModelIngestionStatus!\n}\n"
)
_IMPLEMENTS: Final = re.compile(r"^(type ModelIngestion\w+Status implements HasModelIngestion"
                                r"Status)", re.M)  # fmt: skip


@cache
def sdl(api: str, status_interface: bool = False) -> str:
    """The SDL of ``api``; with ``status_interface`` the status union becomes an interface."""
    parts = _MARKER.split(SCHEMA_PATH.read_text(encoding="utf-8"))
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    text = "".join(sections[name] for name in SECTIONS[api])
    if status_interface and "v3" in SECTIONS[api]:
        if len(_STATUS_UNION.findall(text)) != 1 or len(_IMPLEMENTS.findall(text)) != 6:
            raise RuntimeError("speckle.graphql no longer has the expected status union")
        text = _STATUS_UNION.sub(_STATUS_INTERFACE, text)
        text = _IMPLEMENTS.sub(r"\1 & ModelIngestionStatusData", text)
    return text


def build_schema(
    api: str, status_interface: bool, resolvers: Mapping[str, Mapping[str, Resolver]]
) -> GraphQLSchema:
    """A fresh schema with ``resolvers`` (type name → field name → resolver) installed; fields
    the API's schema lacks are skipped. A ``Subscription`` field's resolver is its ``subscribe``
    function (the field itself resolves to the event it is given)."""
    schema = build_sdl_schema(sdl(api, status_interface))
    for type_name, fields in resolvers.items():
        gql_type = schema.get_type(type_name)
        if gql_type is None:
            continue
        if not isinstance(gql_type, GraphQLObjectType):  # pragma: no cover - SDL is fixed
            raise TypeError(f"{type_name} is not an object type in speckle.graphql")
        for field_name, resolver in fields.items():
            gql_field = gql_type.fields.get(field_name)
            if gql_field is None:
                continue
            if type_name == "Subscription":
                gql_field.subscribe = resolver
                gql_field.resolve = _the_event
            else:
                gql_field.resolve = resolver
    for abstract in schema.type_map.values():
        if isinstance(abstract, GraphQLUnionType | GraphQLInterfaceType):
            abstract.resolve_type = _typename_of
    return schema


def _the_event(event: Any, _info: Info, **_args: Any) -> Any:
    return event


def _typename_of(value: Any, _info: Info, _abstract: Any) -> str | None:
    return value.get("__typename") if isinstance(value, Mapping) else None
