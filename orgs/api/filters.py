"""Query-string filters for list endpoints, declared per view as ``list_filters``.

``list_filters = {"kind": ("kind", str), "project": ("project_id", int)}``: a query parameter,
the ORM lookup it filters on, and how to parse it (``int``, ``str``, ``bool``, ``datetime``, or
``"present"``: a boolean meaning the field is set, e.g. ``revoked=true``).
Bad values answer 400 with the parameter named. ``search_fields`` adds ``?q=`` (icontains).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend

_TYPES = {
    int: "integer",
    str: "string",
    bool: "boolean",
    "present": "boolean",
    "datetime": "string",
}


def _parse(kind: Any, raw: str) -> Any:
    if kind is int:
        return int(raw)
    if kind is bool or kind == "present":
        lowered = raw.lower()
        if lowered in {"1", "true", "yes"}:
            return True
        if lowered in {"0", "false", "no"}:
            return False
        raise ValueError(raw)
    if kind == "datetime":
        value = parse_datetime(raw)
        if value is None:
            raise ValueError(raw)
        return value
    return raw


class DeclaredFilters(BaseFilterBackend):
    def filter_queryset(self, request: Any, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        errors: dict[str, list[str]] = {}
        for param, (lookup, kind) in getattr(view, "list_filters", {}).items():
            raw = request.query_params.get(param)
            if raw is None or raw == "":
                continue
            try:
                value = _parse(kind, raw)
            except (ValueError, TypeError):
                errors[param] = [f"Expected a {_TYPES.get(kind, 'value')}."]
                continue
            if kind == "present":  # "is set": revoked=true means revoked_at IS NOT NULL
                queryset = queryset.filter(**{f"{lookup}__isnull": not value})
            else:
                queryset = queryset.filter(**{lookup: value})
        if errors:
            raise ValidationError(errors)
        search = request.query_params.get("q")
        fields = getattr(view, "search_fields", ())
        if search and fields:
            condition = Q()
            for field in fields:
                condition |= Q(**{f"{field}__icontains": search})
            queryset = queryset.filter(condition)
        return queryset

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        params = [
            {
                "name": param,
                "required": False,
                "in": "query",
                "schema": {"type": _TYPES.get(kind, "string")},
            }
            for param, (_lookup, kind) in getattr(view, "list_filters", {}).items()
        ]
        if getattr(view, "search_fields", ()):
            params.append(
                {
                    "name": "q",
                    "required": False,
                    "in": "query",
                    "description": "Case-insensitive search",
                    "schema": {"type": "string"},
                }
            )
        return params
