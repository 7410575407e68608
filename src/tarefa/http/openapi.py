"""OpenAPI as the API really answers: a malformed request is a 400 with the SPEC error body,
not FastAPI's 422 ``HTTPValidationError``; and the answers every route may give are documented on
each (400 for any parameter or body, 404 for a path parameter, 413 and 415 for a body)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
BAD_REQUEST = {
    "description": "A malformed parameter or body",
    "content": {"application/json": {"schema": ERROR_REF}},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


IMPLIED = {
    "400": _error("A malformed parameter or body"),
    "404": _error("Nothing at this path (or not yours)"),
    "413": _error("The request body is over the server's limit"),
    "415": _error("The body is not JSON (send Content-Type: application/json)"),
}


def _implied_responses(operation: dict[str, Any]) -> list[str]:
    parameters = operation.get("parameters", [])
    codes = ["400"] if parameters or "requestBody" in operation else []
    if any(parameter.get("in") == "path" for parameter in parameters):
        codes.append("404")
    if "requestBody" in operation:
        codes += ["413", "415"]
    return codes


#: No control character in a path or query parameter: the request limits refuse them (400).
NO_CONTROL_CHARACTERS = "^[^\\u0000-\\u001f\\u007f]*$"


def _refuse_control_characters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if parameter.get("in") not in ("path", "query"):
            continue
        schema = parameter.get("schema", {})
        for option in [schema, *schema.get("anyOf", [])]:
            if option.get("type") == "string" and "pattern" not in option and "enum" not in option:
                option["pattern"] = NO_CONTROL_CHARACTERS


def _document_implied_responses(schema: dict[str, Any]) -> None:
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            _refuse_control_characters(operation)
            responses = operation.setdefault("responses", {})
            for code in _implied_responses(operation):
                responses.setdefault(code, IMPLIED[code])
            for code, response in responses.items():
                if code >= "400" and "content" not in response:  # every error answer has the SPEC body
                    response["content"] = IMPLIED["400"]["content"]


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
            _document_implied_responses(schema)
            _document_common_errors(schema)
            if getattr(getattr(app.state, "tarefa", None), "identity", None) is not None:
                _document_sign_in(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
