"""Apollo Server 4's HTTP answers, as the Speckle plane gives them for ``POST /graphql``.

Rules this module keeps:

* **Apollo Server 4's HTTP answers.** A body that is not a JSON object with a non-empty ``query``
  (or not ``application/json``) → 400 ``BAD_REQUEST``; a syntax error → 400
  ``GRAPHQL_PARSE_FAILED``; a document the schema refuses → 400 ``GRAPHQL_VALIDATION_FAILED``;
  an unknown or ambiguous operation → 400 ``OPERATION_RESOLUTION_FAILURE``; variables that do
  not fit their types → 400 ``BAD_USER_INPUT`` (no ``data``: the server sets Apollo's
  ``status400ForVariableCoercionErrors: true``, ``packages/server/app.ts``); resolver errors →
  200, ``data`` nulled as the schema's nullability dictates and ``errors[].extensions`` holding
  ``code`` and ``statusCode`` (a resolver error without a code is ``INTERNAL_SERVER_ERROR``).
* Errors are formatted as ``buildErrorFormatter`` does (``modules/core/graph/setup.ts``):
  ``message``, ``locations``, ``path``, ``extensions``; no stack trace (production).
* Every operation that runs is counted by name (``(anonymous)`` without one).
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

import orjson
from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    execute,
    get_operation_ast,
    parse,
    validate,
)

from engine.sandbox.speckle.errors import (
    BAD_REQUEST,
    BAD_USER_INPUT,
    GRAPHQL_PARSE_FAILED,
    GRAPHQL_VALIDATION_FAILED,
    INTERNAL_SERVER_ERROR,
    OPERATION_RESOLUTION_FAILURE,
)
from engine.sandbox.speckle.records import Caller

__all__ = ["format_error", "run_request"]


async def run_request(
    schema: GraphQLSchema,
    body: bytes,
    content_type: str,
    caller: Caller,
    operations: Counter[str],
) -> tuple[int, dict[str, Any]]:
    """Execute one GraphQL request body; return ``(HTTP status, JSON payload)``."""
    request = _parse_request(body, content_type)
    if isinstance(request, str):
        return 400, _errors_payload([_plain_error(request, BAD_REQUEST)])
    query, variables, operation_name = request
    try:
        document = parse(query)
    except GraphQLError as exc:
        return 400, _errors_payload([format_error(exc, GRAPHQL_PARSE_FAILED)])
    problems = validate(schema, document)
    if problems:
        return 400, _errors_payload([format_error(e, GRAPHQL_VALIDATION_FAILED) for e in problems])
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        message = (
            f'Unknown operation named "{operation_name}".'
            if operation_name
            else "Must provide operation name if query contains multiple operations."
        )
        return 400, _errors_payload([_plain_error(message, OPERATION_RESOLUTION_FAILURE)])
    operations[operation.name.value if operation.name else "(anonymous)"] += 1
    outcome = execute(
        schema,
        document,
        variable_values=variables,
        operation_name=operation_name,
        context_value=caller,
    )
    result = await outcome if inspect.isawaitable(outcome) else outcome
    assert isinstance(result, ExecutionResult)
    if result.data is None and result.errors and all(not e.path for e in result.errors):
        # Variable coercion failed: nothing ran (status400ForVariableCoercionErrors).
        return 400, _errors_payload([format_error(e, BAD_USER_INPUT) for e in result.errors])
    payload: dict[str, Any] = {}
    if result.errors:
        payload["errors"] = [format_error(e, INTERNAL_SERVER_ERROR) for e in result.errors]
    payload["data"] = result.data
    return 200, payload


def _parse_request(body: bytes, content_type: str) -> tuple[str, dict[str, Any], str | None] | str:
    """``(query, variables, operationName)`` from a POST body, or why it is a bad request."""
    if content_type != "application/json":
        return "POST body missing, invalid Content-Type, or JSON object has no keys."
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"POST body is not valid JSON: {exc}"
    if not isinstance(request, dict) or not request:
        return "POST body missing, invalid Content-Type, or JSON object has no keys."
    query = request.get("query")
    if not isinstance(query, str) or not query.strip():
        return (
            "GraphQL operations must contain a non-empty `query` or a `persistedQuery` extension."
        )
    variables = request.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        return "`variables` in a POST body should be provided as an object if provided."
    operation_name = request.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return "`operationName` in a POST body should be provided as a string if provided."
    return query, variables, operation_name


def _plain_error(message: str, code: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}


def format_error(error: GraphQLError, default_code: str) -> dict[str, Any]:
    """``error`` as the server formats it; ``default_code`` if it carries no code."""
    out: dict[str, Any] = {"message": error.message}
    if error.locations:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        out["path"] = list(error.path)
    extensions = dict(error.extensions or {})
    extensions.setdefault("code", default_code)
    out["extensions"] = extensions
    return out


def _errors_payload(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"errors": errors}
