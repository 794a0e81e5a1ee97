"""Azure OpenAI: the OpenAI body at
``{base}/openai/deployments/{deployment}/chat/completions?api-version=...`` with an ``api-key``
header. ``Endpoint.model`` is the deployment name; ``Endpoint.api_version`` defaults to
:data:`DEFAULT_API_VERSION`. Azure's content filter answers 400 with code ``content_filter``
(innererror ``ResponsibleAIPolicyViolation``), mapped to CONTENT_FILTER.
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.providers.base import join_url
from gateway.providers.openai import OpenAIAdapter
from gateway.providers.types import Endpoint

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIAdapter(OpenAIAdapter):
    kind = "azure"

    def auth_headers(self, endpoint: Endpoint) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if endpoint.api_key:
            headers["api-key"] = endpoint.api_key
        return headers

    def _url(self, endpoint: Endpoint, operation: str) -> str:
        version = quote(endpoint.api_version or DEFAULT_API_VERSION, safe="")
        deployment = quote(endpoint.model, safe="")
        return join_url(
            endpoint.base_url,
            f"/openai/deployments/{deployment}/{operation}?api-version={version}",
        )

    def chat_url(self, endpoint: Endpoint) -> str:
        return self._url(endpoint, "chat/completions")

    def embeddings_url(self, endpoint: Endpoint) -> str:
        return self._url(endpoint, "embeddings")

    def wire_model(self, endpoint: Endpoint) -> str | None:
        return None  # the deployment in the path names the model
