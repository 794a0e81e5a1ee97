"""Billing's domain errors. Admission refusals carry what the gateway needs to answer:
``BudgetExceeded`` -> 429 ``budget_exceeded``, ``BalanceExhausted`` -> 402,
``RateLimited`` -> 429 with ``Retry-After``, ``AdmissionUnavailable`` -> 503."""

from __future__ import annotations

from orgs.errors import InvalidInput, OrgsError

__all__ = [
    "AdmissionRefused",
    "AdmissionUnavailable",
    "BalanceExhausted",
    "BillingError",
    "BudgetExceeded",
    "InvalidInput",
    "RateLimited",
    "WebhookRejected",
]


class BillingError(OrgsError):
    code = "billing_error"


class WebhookRejected(BillingError):
    code = "webhook_rejected"


class AdmissionRefused(Exception):
    """Base of admission refusals. ``http_status`` and ``code`` are what the gateway answers."""

    http_status = 429
    code = "refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BudgetExceeded(AdmissionRefused):
    http_status = 429
    code = "budget_exceeded"

    def __init__(self, *, layer: str, scope_id: int, budget_id: int) -> None:
        super().__init__(f"the {layer} budget (id {budget_id}) does not allow this request")
        self.layer = layer
        self.scope_id = scope_id
        self.budget_id = budget_id


class BalanceExhausted(AdmissionRefused):
    http_status = 402
    code = "insufficient_balance"

    def __init__(self, *, organization_id: int) -> None:
        super().__init__("the organization's prepaid balance does not cover this request")
        self.layer = "balance"
        self.organization_id = organization_id


class RateLimited(AdmissionRefused):
    http_status = 429
    code = "rate_limited"

    def __init__(self, *, limit: str, retry_after: int) -> None:
        super().__init__(f"the key's {limit}-per-minute limit is reached")
        self.layer = "key"
        self.limit = limit  # "requests" | "tokens"
        self.retry_after = retry_after


class AdmissionUnavailable(AdmissionRefused):
    """Counters are being rebuilt (Redis restarted): fail closed for a moment."""

    http_status = 503
    code = "admission_unavailable"

    def __init__(self, message: str = "budget counters are being rebuilt; retry shortly") -> None:
        super().__init__(message)
        self.retry_after = 1
