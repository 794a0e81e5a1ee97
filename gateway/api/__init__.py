"""The gateway's public HTTP surface under ``/v1/`` (OpenAI + Anthropic Messages)."""
