"""The same ``/v1/`` handlers behind a Django async view, for ``runserver``, WSGI deployments
and Django's test client. Production ASGI serving goes through :mod:`gateway.api.asgi`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from gateway.api.handlers import dispatch, error_response
from gateway.api.http import ApiRequest, ApiResponse
from gateway.errors import InvalidRequest, PayloadTooLarge


@csrf_exempt
async def v1_view(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    headers = {name.lower(): value for name, value in request.headers.items()}
    api_request = ApiRequest(
        method=request.method or "GET",
        path=request.path,
        headers=headers,
        body=b"",
        request_id=getattr(request, "request_id", ""),
        client_ip=request.META.get("REMOTE_ADDR"),
    )
    limit = settings.MEGAROUTER_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        response = error_response(api_request, InvalidRequest("Invalid Content-Length header."))
    else:
        if declared > limit:
            response = error_response(
                api_request,
                PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes."),
            )
        else:
            # read(), not .body: the size limit is ours (MEGAROUTER_MAX_BODY_BYTES).
            api_request.body = request.read()
            response = await dispatch(api_request)
    if hasattr(request, "log_fields"):
        request.log_fields.update(api_request.log_fields)
    return _to_django(response)


def _to_django(response: ApiResponse) -> HttpResponse | StreamingHttpResponse:
    if response.stream is None:
        result: HttpResponse | StreamingHttpResponse = HttpResponse(
            response.body, status=response.status, content_type=response.content_type
        )
    else:
        result = StreamingHttpResponse(
            _closing(response), status=response.status, content_type=response.content_type
        )
    for name, value in response.headers.items():
        result[name] = value
    return result


async def _closing(response: ApiResponse) -> AsyncIterator[bytes]:
    stream = response.stream
    assert stream is not None
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        if response.on_close is not None:
            await response.on_close()
