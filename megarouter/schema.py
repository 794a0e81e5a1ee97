"""drf-spectacular postprocessing: declare the error answers every management API operation
can give (the views declare their success bodies). Without them the schema promised only the
success status, and schemathesis (``make api-fuzz``) reported every designed 400 / 401 / 403 /
404 as an undocumented status code."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "description": (
        "DRF's error body: ``detail`` for authentication, permission, not-found and throttling "
        "errors; for invalid input, one list of messages per field (``non_field_errors`` for "
        "the request as a whole)."
    ),
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": True,
}

ERRORS = (
    ("400", "Invalid input: the body or a query parameter failed validation (per field)."),
    ("401", "No valid credentials (session, or Authorization: Token mrp_...)."),
    ("403", "Authenticated, but the caller's role does not allow this here."),
    ("404", "No such object in the caller's organization (other tenants' objects included)."),
    ("405", "The method is not allowed on this path."),
    ("415", "The body's media type is not supported (JSON or form data)."),
    ("429", "Too many requests."),
)

METHODS = {"get", "post", "put", "patch", "delete"}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> Any:
    ref = {"$ref": "#/components/schemas/Error"}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for code, description in ERRORS:
                if code == "415" and method in ("get", "delete"):
                    continue
                responses.setdefault(
                    code,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    return result
