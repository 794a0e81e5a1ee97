"""Spend analytics: usage rollups (hourly and daily), savings against a reference model, the
analytics selectors and API. See docs/analytics.md."""
