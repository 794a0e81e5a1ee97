"""Savings: what a request's tokens would have cost on the reference model.

The reference model is ``settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL`` (a canonical catalog id,
default ``openai/gpt-4o``). Its price is the catalog version in force when the request was
made, applied with the same rule as ``billing.pricing.usage_cost`` (cached prompt tokens at the
cached price where the model has one). A request older than the first price version the catalog
knows is priced at that first version (a catalog imported today still prices last month's
usage). When the catalog has no price at all for the reference model, the reference cost is the
actual cost (savings 0), never a guess.

Two implementations that agree exactly (tested): ``ReferencePricer`` in Python for the
incremental rollup and the CSV export, ``reference_cost_expression`` in SQL for rebuilds and
queries over raw records.
"""

from __future__ import annotations

import bisect
import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Case, DecimalField, ExpressionWrapper, F, Q, Value, When

from routing.models import ModelPrice

AMOUNT_FIELD = DecimalField(max_digits=24, decimal_places=12)


def reference_model() -> str:
    return str(settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL)


def _versions(model_id: str) -> list[tuple[dt.datetime, Decimal, Decimal, Decimal]]:
    """[(effective_from, input, cached input, output)] ascending."""
    rows = ModelPrice.objects.filter(model__canonical_id=model_id).order_by("effective_from")
    return [
        (
            p.effective_from,
            p.input_per_token,
            p.cached_input_per_token if p.cached_input_per_token is not None else p.input_per_token,
            p.output_per_token,
        )
        for p in rows
    ]


class ReferencePricer:
    """Reference cost of one record in Python. Loads the price versions once (one query)."""

    def __init__(self, model_id: str | None = None) -> None:
        self.model_id = model_id or reference_model()
        self.versions = _versions(self.model_id)
        self.starts = [v[0] for v in self.versions]

    def cost(
        self,
        *,
        when: dt.datetime,
        tokens_in: int,
        tokens_out: int,
        tokens_cached: int,
        actual: Decimal,
    ) -> Decimal:
        if not self.versions:
            return actual
        index = bisect.bisect_right(self.starts, when)
        _, p_in, p_cached, p_out = self.versions[max(index - 1, 0)]
        return (tokens_in - tokens_cached) * p_in + tokens_cached * p_cached + tokens_out * p_out


def reference_cost_expression(
    *, time_field: str = "created_at", prefix: str = "", model_id: str | None = None
) -> Any:
    """A per-row SQL expression equal to ``ReferencePricer.cost`` (for ``Sum(...)``)."""
    versions = _versions(model_id or reference_model())
    tin, tout, tcached = (F(f"{prefix}{n}") for n in ("tokens_in", "tokens_out", "tokens_cached"))
    whens = []
    for i, (start, p_in, p_cached, p_out) in enumerate(versions):
        window = Q() if i == 0 else Q(**{f"{prefix}{time_field}__gte": start})
        if i + 1 < len(versions):
            window &= Q(**{f"{prefix}{time_field}__lt": versions[i + 1][0]})
        amount = (
            (tin - tcached) * Value(p_in, output_field=AMOUNT_FIELD)
            + tcached * Value(p_cached, output_field=AMOUNT_FIELD)
            + tout * Value(p_out, output_field=AMOUNT_FIELD)
        )
        then = ExpressionWrapper(amount, output_field=AMOUNT_FIELD)
        if len(versions) == 1:
            return then
        whens.append(When(window, then=then))
    actual = F(f"{prefix}cost")
    if not whens:
        return ExpressionWrapper(actual, output_field=AMOUNT_FIELD)
    return Case(*whens, default=actual, output_field=AMOUNT_FIELD)
