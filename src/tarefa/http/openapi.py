"""OpenAPI as the API really answers: a malformed request is a 400 with the SPEC error body,
not FastAPI's 422 ``HTTPValidationError``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
BAD_REQUEST = {
    "description": "A malformed parameter or body",
    "content": {"application/json": {"schema": ERROR_REF}},
}


def _replace_validation_responses(schema: dict[str, Any]) -> None:
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            unprocessable = responses.get("422", {})
            if "HTTPValidationError" in repr(unprocessable):
                del responses["422"]
                responses.setdefault("400", BAD_REQUEST)
    components = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in repr(schema.get("paths")):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


UNAUTHORIZED = {
    "description": "Not signed in: the credentials are missing or wrong",
    "headers": {"WWW-Authenticate": {"description": 'Basic realm="tarefa"', "schema": {"type": "string"}}},
    "content": {"application/json": {"schema": ERROR_REF}},
}


NOT_FOUND = {
    "description": "No such resource (or not yours)",
    "content": {"application/json": {"schema": ERROR_REF}},
}


def _document_common_errors(schema: dict[str, Any]) -> None:
    """Every operation that takes input may answer 400; every one on an item, 404."""
    for route, path in schema.get("paths", {}).items():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            if operation.get("parameters") or operation.get("requestBody"):
                responses.setdefault("400", BAD_REQUEST)
            if "{" in route:
                responses.setdefault("404", NOT_FOUND)


def _document_sign_in(schema: dict[str, Any]) -> None:
    """With an identity configured, every operation needs it and may answer 401."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).setdefault("401", UNAUTHORIZED)
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes.setdefault("basic", {"type": "http", "scheme": "basic"})
    schema.setdefault("security", [{"basic": []}])


def document_error_bodies(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe validation errors as tarefa answers them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _replace_validation_responses(schema)
            _document_common_errors(schema)
            if getattr(getattr(app.state, "tarefa", None), "identity", None) is not None:
                _document_sign_in(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
