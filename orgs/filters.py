"""Query-string filters for lists, declared once per list (``list_filters`` on an API view, the
same declaration in the console).

``list_filters = {"kind": ("kind", str), "project": ("project_id", int)}``: a query parameter,
the ORM lookup it filters on, and how to parse it (``int``, ``str``, ``bool``, ``datetime``, or
``"present"``: a boolean meaning the field is set, e.g. ``revoked=true``).
Bad values answer 400 with the parameter named. ``search_fields`` adds ``?q=`` (icontains).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime

from orgs.errors import InvalidInput

TYPES = {
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


def filters_apply(
    queryset: QuerySet[Any],
    params: Mapping[str, str],
    declared: Mapping[str, tuple[str, Any]],
    search_fields: tuple[str, ...] = (),
) -> QuerySet[Any]:
    """``queryset`` narrowed by the declared filters present in ``params`` (a query string);
    raises InvalidInput naming every bad parameter. The API's list endpoints and the console's
    lists use the same declarations."""
    errors: dict[str, list[str]] = {}
    for param, (lookup, kind) in declared.items():
        raw = params.get(param)
        if raw is None or raw == "":
            continue
        try:
            value = _parse(kind, raw)
        except (ValueError, TypeError):
            errors[param] = [f"Expected a {TYPES.get(kind, 'value')}."]
            continue
        if kind == "present":  # "is set": revoked=true means revoked_at IS NOT NULL
            queryset = queryset.filter(**{f"{lookup}__isnull": not value})
        else:
            queryset = queryset.filter(**{lookup: value})
    if errors:
        raise InvalidInput(errors)
    search = params.get("q")
    if search and search_fields:
        condition = Q()
        for field in search_fields:
            condition |= Q(**{f"{field}__icontains": search})
        queryset = queryset.filter(condition)
    return queryset
