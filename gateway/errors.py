"""The gateway's domain errors and their one rendering: the OpenAI error object.

Every failure on ``/v1/`` ends as ``{"error": {"message", "type", "param", "code"}}`` with the
status the OpenAI SDKs map to their typed exceptions (400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, ...).
Messages never quote request content (zero data retention): they name fields, not values.
"""

from __future__ import annotations

from typing import Any

import orjson

from billing.errors import AdmissionRefused, BalanceExhausted, BudgetExceeded
from billing.errors import RateLimited as BillingRateLimited
from routing.engine import NoRoute


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    """400: malformed JSON, wrong types, missing or out-of-range parameters."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    """400: a parameter the chosen model (or the gateway) cannot honour."""

    code = "unsupported_parameter"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PaymentRequired(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "balance_exhausted"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    """429: a rate limit (Retry-After set) or a budget (code ``budget_exceeded``)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
        super().__init__(message, code=code, headers=headers)


class UpstreamFailed(GatewayError):
    """502 / 503 / 504: every candidate deployment failed; the message says what was tried."""

    status = 502
    type = "upstream_error"
    code = "upstream_failed"


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Log fields for an unexpected exception without its message or locals: messages can
    quote request or response content (zero data retention). Type and code locations only."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        where = "/".join(code.co_filename.split("/")[-2:])
        frames.append(f"{where}:{tb.tb_lineno}:{code.co_name}")
        tb = tb.tb_next
    return {"error_type": type(exc).__qualname__, "traceback": frames[-8:]}


def error_json(error: GatewayError) -> bytes:
    return orjson.dumps(error.body())


def anthropic_error_json(error: GatewayError) -> bytes:
    """The same error for ``/v1/messages``: Anthropic's envelope (``type: error``) around the
    OpenAI error object's fields, so either SDK reads it."""
    inner = error.body()["error"]
    inner["type"] = _ANTHROPIC_TYPES.get(error.status, inner["type"])
    return orjson.dumps({"type": "error", "error": inner})


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def refusal_error(exc: AdmissionRefused) -> GatewayError:
    """The OpenAI error object for an admission refusal (billing.admission.service)."""
    error: GatewayError
    if isinstance(exc, BudgetExceeded):
        error = RateLimited(
            f"The {exc.layer} budget (id {exc.budget_id}) does not allow this request: its "
            "limit for the current period is reached. Raise the limit or wait for the next "
            "period.",
            code="budget_exceeded",
        )
        error.headers["x-megarouter-budget-layer"] = exc.layer
        error.headers["x-should-retry"] = "false"  # the SDKs' automatic retries cannot help
        return error
    if isinstance(exc, BalanceExhausted):
        error = PaymentRequired(
            "The organization's prepaid balance does not cover this request. Top up the "
            "balance to continue.",
            code="insufficient_balance",
        )
        error.headers["x-should-retry"] = "false"
        return error
    if isinstance(exc, BillingRateLimited):
        return RateLimited(
            f"This key's {exc.limit}-per-minute limit is reached. Retry after "
            f"{exc.retry_after} seconds.",
            retry_after=exc.retry_after,
            code="rate_limited",
        )
    retry_after = getattr(exc, "retry_after", None) or 1
    return GatewayError(
        "Budget admission is momentarily unavailable; retry shortly.",
        status=503,
        code="admission_unavailable",
        headers={"retry-after": str(max(1, int(retry_after)))},
    )


def refusal_layer(exc: AdmissionRefused) -> str:
    """The ``megarouter_budget_refusals{layer}`` label of a refusal."""
    if isinstance(exc, BudgetExceeded):
        return exc.layer
    if isinstance(exc, BalanceExhausted):
        return "balance"
    if isinstance(exc, BillingRateLimited):
        return "rate_limit"
    return "admission_unavailable"


_ROUTE_ERRORS: dict[str, type[GatewayError]] = {
    "model_not_found": NotFound,
    "model_not_allowed": PermissionDenied,
    "unsupported_parameter": UnsupportedParameter,
}


def route_error(exc: NoRoute) -> GatewayError:
    """The OpenAI error object for a routing refusal (routing.engine.NoRoute): its code,
    message and parameter, at its status."""
    cls = _ROUTE_ERRORS.get(exc.code, InvalidRequest)
    code = None if exc.code == "invalid_request" else exc.code
    return cls(exc.message, param=exc.param, code=code)
