"""The organization's audit log (organization-wide owners and admins, as the API)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from console.audit_text import audit_lines
from console.views.base import ConsoleOrgView, filtered, page_of
from orgs.models import AuditEvent
from orgs.roles import VIEW_AUDIT
from orgs.selectors import AUDIT_FILTERS


def _day(raw: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        return None


class AuditView(ConsoleOrgView):
    permission = VIEW_AUDIT
    at_root = True
    section = "audit"

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        qs = AuditEvent.objects.filter(organization=self.organization).select_related("actor")
        actions = (
            AuditEvent.objects.filter(organization=self.organization)
            .order_by("action")
            .values_list("action", flat=True)
            .distinct()
        )
        # The API's filters (the same declaration), from the page's whole days (UTC).
        api_filters: dict[str, str] = {}
        action = request.GET.get("action", "")
        if action:
            api_filters["action"] = action
        since, until = _day(request.GET.get("since", "")), _day(request.GET.get("until", ""))
        if since:
            api_filters["since"] = dt.datetime.combine(
                since, dt.time.min, tzinfo=dt.UTC
            ).isoformat()
        if until:  # the whole day, inclusive
            end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
            api_filters["until"] = end.isoformat()
        qs = filtered(request, qs, api_filters, AUDIT_FILTERS)
        page = page_of(request, qs, per_page=50)
        export = reverse("audit-event-export", kwargs={"org_slug": self.organization.slug})
        if api_filters:
            export += "?" + urlencode(api_filters)
        return self.render(
            "console/audit.html",
            {
                "page": page,
                "lines": audit_lines(self.organization, page.object_list),
                "actions": list(actions),
                "action": action,
                "since": request.GET.get("since", "") if since else "",
                "until": request.GET.get("until", "") if until else "",
                "export_url": export,
            },
        )
