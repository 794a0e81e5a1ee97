"""Factories for provider endpoints and normalized requests."""

from __future__ import annotations

import factory

from gateway.providers.types import ChatRequest, Endpoint, Message, Tool

WEATHER_TOOL = Tool(
    name="get_weather",
    description="Current weather for a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 5},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)

BASE_PATHS = {
    "openai": "/openai/v1",
    "azure": "/azure",
    "anthropic": "/anthropic",
    "gemini": "/gemini",
    "bedrock": "/bedrock",
}
MODELS = {
    "openai": "gpt-4o-mini",
    "azure": "gpt-4o-prod",
    "anthropic": "claude-3-5-haiku-20241022",
    "gemini": "gemini-2.0-flash",
    "bedrock": "anthropic.claude-3-haiku-20240307-v1:0",
}


class EndpointFactory(factory.Factory):
    class Meta:
        model = Endpoint

    class Params:
        url = "http://127.0.0.1:9"

    kind = "openai"
    base_url = factory.LazyAttribute(lambda o: o.url + BASE_PATHS[o.kind])
    model = factory.LazyAttribute(lambda o: MODELS[o.kind])
    api_key = factory.LazyAttribute(lambda o: "" if o.kind == "bedrock" else "sim-test-key")
    api_version = factory.LazyAttribute(lambda o: "2024-10-21" if o.kind == "azure" else None)
    region = factory.LazyAttribute(lambda o: "us-east-1" if o.kind == "bedrock" else None)
    aws_access_key_id = factory.LazyAttribute(
        lambda o: "AKIDEXAMPLE" if o.kind == "bedrock" else None
    )
    aws_secret_access_key = factory.LazyAttribute(
        lambda o: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" if o.kind == "bedrock" else None
    )
    headers = ()


def fault(endpoint: Endpoint, spec: str) -> Endpoint:
    """The endpoint with an ``x-sim-fault`` header (how tests inject simulator faults)."""
    return EndpointFactory(
        kind=endpoint.kind,
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=endpoint.api_key,
        api_version=endpoint.api_version,
        region=endpoint.region,
        aws_access_key_id=endpoint.aws_access_key_id,
        aws_secret_access_key=endpoint.aws_secret_access_key,
        headers=(("x-sim-fault", spec),),
    )


def chat(text: str = "Hello there, how are you today?", **kwargs: object) -> ChatRequest:
    messages = [
        Message(role="system", content="You are terse."),
        Message(role="user", content=text),
    ]
    return ChatRequest(messages=messages, **kwargs)  # type: ignore[arg-type]
