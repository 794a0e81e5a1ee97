"""The DRF filter backend over a view's ``list_filters`` and ``search_fields``
(``orgs.filters``, the declarations the console's lists use too)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend

from orgs.errors import InvalidInput
from orgs.filters import TYPES, filters_apply


class DeclaredFilters(BaseFilterBackend):
    def filter_queryset(self, request: Any, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        try:
            return filters_apply(
                queryset,
                request.query_params,
                getattr(view, "list_filters", {}),
                tuple(getattr(view, "search_fields", ())),
            )
        except InvalidInput as exc:
            raise ValidationError(exc.errors) from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        params = [
            {
                "name": param,
                "required": False,
                "in": "query",
                "schema": {"type": TYPES.get(kind, "string")},
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
