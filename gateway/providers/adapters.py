"""Imports every adapter so each registers its kind (see base.register / base.get_adapter)."""

from gateway.providers import anthropic, azure, bedrock, gemini, openai

__all__ = ["anthropic", "azure", "bedrock", "gemini", "openai"]
