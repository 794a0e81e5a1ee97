"""Domain errors raised by orgs services. The management API maps them to HTTP answers."""

from __future__ import annotations


class OrgsError(Exception):
    """Base class. ``code`` is a stable machine-readable string."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class InvalidInput(OrgsError):
    """Bad input: carries per-field messages (``{"field": ["message"]}``). Maps to 400."""

    code = "invalid"

    def __init__(self, errors: dict[str, list[str]] | dict[str, str]) -> None:
        normalized = {k: v if isinstance(v, list) else [v] for k, v in errors.items()}
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in normalized.items()))
        self.errors: dict[str, list[str]] = normalized


class NotAllowed(OrgsError):
    """The caller's role does not allow this. Maps to 403."""

    code = "permission_denied"
