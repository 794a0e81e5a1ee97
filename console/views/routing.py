"""Routing policies (per node, merged downward) with a "preview route" form, over
routing.policies and routing.engine (the same calls the gateway makes)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from console.forms import RoutePreviewForm, RoutingPolicyForm
from console.views.base import ConsoleOrgView
from console.views.catalog import per_million
from orgs.models import Node
from orgs.policy import RULES
from orgs.roles import MANAGE_POLICIES, VIEW_NODE
from routing.catalog import catalog_snapshot
from routing.complexity.features import RequestFeatures
from routing.engine import NoRoute, RouteRequest, route
from routing.policies import (
    PolicyError,
    catalog_choices,
    policy_catalog_warnings,
    policy_resolve,
    routing_policy_delete,
    routing_policy_set,
)
from routing.policy_models import RoutingPolicy


def preview_route(*, node: Node, model: str, prompt: str) -> dict[str, Any]:
    """What the engine would do for a request with ``prompt`` made from ``node`` (the policies
    of the node and its ancestors apply, as for a key in that project)."""
    path = list(node.ancestor_ids) + [None] * (4 - len(node.ancestor_ids))
    policy = policy_resolve(node_ids=path[:4])
    request = RouteRequest(features=RequestFeatures.from_prompt(prompt), model=model or "auto")
    try:
        decision = route(request=request, policy=policy)
    except NoRoute as exc:
        return {"error": exc.message, "code": exc.code, "explain": exc.explain}
    candidates = [
        {
            "deployment": c.deployment,
            "model": c.model_id,
            "provider": c.provider,
            "input": per_million(c.input_per_token),
            "output": per_million(c.output_per_token),
        }
        for c in decision.candidates
    ]
    est = decision.estimate
    return {
        "strategy": decision.strategy,
        "candidates": candidates,
        "tier": est.tier if est else None,
        "difficulty": round(est.difficulty, 3) if est else None,
        "explain": decision.explain,
        "policy": policy.summary(),
    }


class PoliciesView(ConsoleOrgView):
    permission = VIEW_NODE
    post_permission = MANAGE_POLICIES
    section = "policies"

    def _policy_nodes(self) -> Any:
        return Node.objects.filter(
            organization=self.organization,
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(MANAGE_POLICIES),
        )

    def _visible_nodes(self) -> Any:
        return Node.objects.filter(
            organization=self.organization,
            archived_at__isnull=True,
            id__in=self.scope.visible_ids(VIEW_NODE),
        )

    def _form(self, data: Any = None, initial: Any = None) -> RoutingPolicyForm:
        return RoutingPolicyForm(data, nodes=self._policy_nodes(), initial=initial)

    def get(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        initial = None
        edit = request.GET.get("node", "")
        if edit.isdigit():
            row = RoutingPolicy.objects.filter(
                organization=self.organization, node_id=int(edit)
            ).first()
            initial = {"node": int(edit)}
            if row is not None:
                initial.update(RoutingPolicyForm.initial_for(row.document))
        preview_form = RoutePreviewForm(
            request.GET if "preview-prompt" in request.GET else None,
            nodes=self._visible_nodes(),
            prefix="preview",
        )
        preview = None
        if preview_form.is_bound and preview_form.is_valid():
            preview = preview_route(
                node=preview_form.cleaned_data["node"],
                model=preview_form.cleaned_data["model"].strip(),
                prompt=preview_form.cleaned_data["prompt"],
            )
        return self._page(self._form(initial=initial), preview_form, preview)

    def post(self, request: HttpRequest, org_slug: str) -> HttpResponse:
        form = self._form(request.POST)
        if form.is_valid():
            node = form.cleaned_data["node"]
            self.scope.require(node, MANAGE_POLICIES)
            try:
                policy = routing_policy_set(actor=self.scope.actor, node=node, data=form.document())
            except PolicyError as exc:
                for name, message in exc.errors.items():
                    form.add_error(name if name in form.fields else None, message)
            else:
                messages.success(request, f"Routing policy of {node.name} saved.")
                warnings = policy_catalog_warnings(policy.document, catalog_snapshot(max_age=0))
                for name, text in warnings.items():
                    messages.warning(request, f"{RULES[name].label}: {text}.")
                return redirect("console:policies", org_slug=org_slug)
        preview_form = RoutePreviewForm(nodes=self._visible_nodes(), prefix="preview")
        return self._page(form, preview_form, None, status=400)

    def _page(self, form: Any, preview_form: Any, preview: Any, status: int = 200) -> HttpResponse:
        rows = []
        manageable: set[int] = set()
        if self.scope.can(MANAGE_POLICIES):
            manageable = self.scope.visible_id_set(MANAGE_POLICIES)
        policies = (
            RoutingPolicy.objects.filter(
                organization=self.organization, node_id__in=self.scope.visible_ids(VIEW_NODE)
            )
            .select_related("node")
            .order_by("node__path")
        )
        for p in policies:
            rows.append({"p": p, "doc": p.document, "can_manage": p.node_id in manageable})
        return self.render(
            "console/policies.html",
            {
                "rows": rows,
                "form": form,
                "preview_form": preview_form,
                "preview": preview,
                # the pickers' suggestions: what the policy's lists can name today
                "choices": catalog_choices(catalog_snapshot()),
            },
            status=status,
        )


class PolicyDeleteView(ConsoleOrgView):
    permission = MANAGE_POLICIES
    post_permission = MANAGE_POLICIES
    section = "policies"

    def post(self, request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
        policy = self.scoped_get(
            RoutingPolicy.objects.select_related("node"), pk, node_field="node", perm=VIEW_NODE
        )
        self.scope.require(policy.node, MANAGE_POLICIES)
        routing_policy_delete(actor=self.scope.actor, policy=policy)
        messages.success(request, f"Routing policy of {policy.node.name} removed.")
        return redirect("console:policies", org_slug=org_slug)
