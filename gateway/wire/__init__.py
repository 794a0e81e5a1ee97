"""Inbound wire formats: parse and validate client requests into the normalized types of
``gateway.providers.types``, and render normalized responses back in the client's format."""
