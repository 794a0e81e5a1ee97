"""Request id and the per-request JSON log line."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

logger = logging.getLogger("megarouter.request")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_for(request: Any) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a new one."""
    supplied = request.META.get("HTTP_X_REQUEST_ID", "")
    if supplied and _REQUEST_ID_OK.match(supplied):
        return supplied
    # 32 hex digits like uuid4().hex, from the process's own generator: uuid4 (os.urandom)
    # releases the GIL for a system call and then queues for it behind the usage writer's
    # thread, which cost the request path 1 to 2 % of a worker's samples. An id, not a secret
    # (callers may choose their own).
    return f"{random.getrandbits(128):032x}"


class RequestLogMiddleware:
    """Tags each request with ``request.request_id`` and logs one line when it ends.

    Views add tenant ids to ``request.log_fields`` (a dict); the line carries method, route,
    status, latency and those ids, never bodies, query strings or headers.
    """

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        started = self._start(request)
        response = self.get_response(request)
        self._finish(request, response, started)
        return response

    async def _acall(self, request: Any) -> Any:
        started = self._start(request)
        response = await self.get_response(request)
        self._finish(request, response, started)
        return response

    @staticmethod
    def _start(request: Any) -> float:
        request.request_id = request_id_for(request)
        request.log_fields = {}
        return time.perf_counter()

    @staticmethod
    def _finish(request: Any, response: Any, started: float) -> None:
        response["X-Request-ID"] = request.request_id
        match = getattr(request, "resolver_match", None)
        fields = {
            "request_id": request.request_id,
            "method": request.method,
            "route": match.route if match is not None else None,
            "status": response.status_code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "streaming": bool(getattr(response, "streaming", False)),
        }
        fields.update(request.log_fields)
        logger.info("request", extra={"fields": fields})


class ApiJsonErrorsMiddleware:
    """Under ``/api/`` every answer is JSON: Django's own 404 (no URL matched), 405 and 500
    pages are HTML, so they are replaced by DRF's error shape (``{"detail": ...}``) with the
    same status. DRF views already answer JSON; this covers what never reaches a view."""

    sync_capable = True
    async_capable = True

    MESSAGES = {404: "Not found.", 405: "Method not allowed.", 500: "Server error."}

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return self._json(request, self.get_response(request))

    async def _acall(self, request: Any) -> Any:
        return self._json(request, await self.get_response(request))

    def _json(self, request: Any, response: Any) -> Any:
        if (
            response.status_code in self.MESSAGES
            and request.path.startswith("/api/")
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            from django.http import JsonResponse

            replaced = JsonResponse(
                {"detail": self.MESSAGES[response.status_code]}, status=response.status_code
            )
            if response.has_header("Allow"):
                replaced["Allow"] = response["Allow"]
            return replaced
        return response
