"""Savings: what a request's tokens would have cost on its reference model.

Each usage record carries the reference model it is measured against (``reference_model``,
a canonical catalog id): the effective routing policy's ``reference_model`` when the request was
made (organization / department / team / project / key, nearest wins, then the request's own
``megarouter.reference_model``), else ``settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL`` (default
``openai/gpt-4o``). Records from before the column existed ("") use that default.

A record's reference price is its reference model's catalog version in force when the request
was made, applied with the same rule as ``routing.pricing.usage_cost`` (cached prompt tokens at
the cached price where the model has one). A request older than the first price version the
catalog knows is priced at that first version (a catalog imported today still prices last
month's usage). When the catalog has no price at all for the reference model, the reference cost
is the actual cost (savings 0), never a guess.

Two implementations that agree exactly (tested): ``ReferencePricer`` in Python for the
incremental rollup and the CSV export, ``reference_cost_expression`` in SQL for rebuilds and
queries over raw records (a ``CASE`` on the reference model, then on the time, for the reference
models the rows hold: ``reference_models_of`` finds them).
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import (
    Case,
    CharField,
    DecimalField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.functions import Coalesce, NullIf

from routing.models import ModelPrice

AMOUNT_FIELD = DecimalField(max_digits=24, decimal_places=12)
Versions = list[tuple[dt.datetime, Decimal, Decimal, Decimal]]


def reference_model() -> str:
    """The default reference model (records without their own)."""
    return str(settings.MEGAROUTER_DEFAULT_REFERENCE_MODEL)


def effective_reference(value: str | None) -> str:
    """A record's reference model: its own, else ("" or None) the default."""
    return value or reference_model()


def reference_model_column(prefix: str = "") -> Any:
    """SQL: a usage record's effective reference model ("" -> the default)."""
    return Coalesce(
        NullIf(F(f"{prefix}reference_model"), Value("")),
        Value(reference_model()),
        output_field=CharField(),
    )


def reference_model_q(values: Iterable[str], prefix: str = "") -> Q:
    """Usage records whose effective reference model is one of ``values``."""
    wanted = list(values)
    q = Q(**{f"{prefix}reference_model__in": wanted})
    if reference_model() in wanted:
        q |= Q(**{f"{prefix}reference_model": ""})
    return q


def reference_models_of(records: QuerySet[Any]) -> list[str]:
    """The effective reference models of ``records`` (a usage record queryset), sorted."""
    raw = records.order_by().values_list("reference_model", flat=True).distinct()
    return sorted({effective_reference(v) for v in raw})


def _versions(model_id: str) -> Versions:
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
    """Reference cost of one record in Python. Loads each reference model's price versions
    once (one query per model, on first use)."""

    def __init__(self, model_id: str | None = None) -> None:
        # ``model_id``: the reference model of records that carry none (default: the setting).
        self.default = model_id or reference_model()
        self._versions: dict[str, tuple[Versions, list[dt.datetime]]] = {}

    def _for(self, model_id: str) -> tuple[Versions, list[dt.datetime]]:
        loaded = self._versions.get(model_id)
        if loaded is None:
            versions = _versions(model_id)
            loaded = (versions, [v[0] for v in versions])
            self._versions[model_id] = loaded
        return loaded

    def cost(
        self,
        *,
        when: dt.datetime,
        tokens_in: int,
        tokens_out: int,
        tokens_cached: int,
        actual: Decimal,
        model: str | None = None,
    ) -> Decimal:
        """``model``: the record's reference model (None / "": the default)."""
        versions, starts = self._for(model or self.default)
        if not versions:
            return actual
        index = bisect.bisect_right(starts, when)
        _, p_in, p_cached, p_out = versions[max(index - 1, 0)]
        return (tokens_in - tokens_cached) * p_in + tokens_cached * p_cached + tokens_out * p_out


def _model_expression(versions: Versions, time_field: str, prefix: str) -> Any:
    """The reference cost of a row on one model's price versions (None: no price known)."""
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
    if not whens:
        return None
    return Case(*whens, output_field=AMOUNT_FIELD)


def reference_cost_expression(
    *, models: Iterable[str], time_field: str = "created_at", prefix: str = ""
) -> Any:
    """A per-row SQL expression equal to ``ReferencePricer.cost`` (for ``Sum(...)``) over
    usage records whose effective reference model is one of ``models`` (pass
    ``reference_models_of(records)``). ``CASE`` on the reference model, then on the time; a row
    whose reference model has no price (or is not in ``models``) is priced at its actual cost."""
    actual = ExpressionWrapper(F(f"{prefix}cost"), output_field=AMOUNT_FIELD)
    whens = []
    for model_id in sorted(set(models)):
        expr = _model_expression(_versions(model_id), time_field, prefix)
        if expr is not None:  # no price: the actual cost (the CASE's default)
            whens.append(When(reference_model_q([model_id], prefix), then=expr))
    if not whens:
        return actual
    return Case(*whens, default=actual, output_field=AMOUNT_FIELD)
