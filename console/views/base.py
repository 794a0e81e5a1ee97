"""Helpers shared by the console's views: rendering with the sidebar's context, pagination,
list filters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.access import OrgView
from orgs.errors import InvalidInput, NotAllowed
from orgs.filters import filters_apply
from orgs.selectors import organizations_for_user

PAGE_SIZE = 25


def page_of(request: HttpRequest, items: Any, per_page: int = PAGE_SIZE) -> Page:
    """The requested page (``?page=``); out-of-range or junk numbers give the nearest page."""
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def filtered(
    request: HttpRequest,
    queryset: QuerySet[Any],
    params: Mapping[str, str],
    declared: Mapping[str, tuple[str, Any]],
    search: tuple[str, ...] = (),
) -> QuerySet[Any]:
    """A console list narrowed by the management API's own filter declarations
    (``orgs.filters``); a bad value is named in a message and that list is shown unfiltered."""
    try:
        return filters_apply(queryset, params, declared, search)
    except InvalidInput as exc:
        for name, texts in exc.errors.items():
            messages.error(request, f"{name}: {' '.join(texts)}")
        return queryset


def render_page(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    context.setdefault("my_orgs", list(organizations_for_user(user=request.user)))
    return render(request, template, context, status=status)


class ConsoleOrgView(OrgView):
    """``OrgView`` plus rendering; a service's ``NotAllowed`` becomes a 403 page."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return super().dispatch(request, *args, **kwargs)
        except NotAllowed as exc:
            raise PermissionDenied(exc.detail) from None

    def render(self, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
        return render_page(self.request, template, {**self.base_context(), **context}, status)
