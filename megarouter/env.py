"""Typed helpers that read settings from environment variables.

Every helper names the variable in its error, so a bad value stops the process with one line
such as ``DATABASE_URL: unsupported scheme 'mysqlx' (use postgres:// or sqlite:///)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ImproperlyConfigured):
    """A setting read from the environment is missing or malformed."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class Env:
    """Reads typed values from a mapping (``os.environ`` unless given)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None:
            return None
        return value.strip()

    def str(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.raw(name)
        if value is None or value == "":
            if required or default is None:
                raise ConfigError(name, "is required but not set")
            return default
        return value

    def optional_str(self, name: str) -> str | None:
        value = self.raw(name)
        return value or None

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(name, f"expected a boolean (true/false, 1/0, yes/no), got {value!r}")

    def int(
        self, name: str, default: int, *, min_value: int | None = None, max_value: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {value!r}") from None
        _check_range(name, number, min_value, max_value)
        return number

    def float(
        self,
        name: str,
        default: float,
        *,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> float:
        value = self.raw(name)
        if value is None or value == "":
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(name, f"expected a number, got {value!r}") from None
        if number != number:  # NaN
            raise ConfigError(name, "expected a number, got NaN")
        _check_range(name, number, min_value, max_value)
        return number

    def decimal(self, name: str, default: Decimal, *, min_value: Decimal | None = None) -> Decimal:
        value = self.raw(name)
        if value is None or value == "":
            return default
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise ConfigError(name, f"expected a decimal number, got {value!r}") from None
        if not number.is_finite():
            raise ConfigError(name, f"expected a finite decimal number, got {value!r}")
        _check_range(name, number, min_value, None)
        return number

    def list(self, name: str, default: list[str] | None = None) -> list[str]:
        value = self.raw(name)
        if value is None:
            return list(default or [])
        return [item.strip() for item in value.split(",") if item.strip()]

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(name, default)
        if value not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def path(self, name: str, default: Path) -> Path:
        value = self.raw(name)
        return Path(value).expanduser() if value else default

    def database(self, name: str, default_sqlite_path: Path) -> dict[str, Any]:
        """Parse a database URL: ``postgres://user:pass@host:port/name`` or ``sqlite:///path``."""
        value = self.raw(name)
        if not value:
            return _sqlite_config(default_sqlite_path)
        return parse_database_url(name, value)

    def redis_url(self, name: str) -> str | None:
        value = self.raw(name)
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(
                name, f"unsupported scheme {parts.scheme!r} (use redis://host:port/db)"
            )
        if parts.scheme != "unix":
            if not parts.hostname:
                raise ConfigError(name, "has no host (use redis://host:port/db)")
            try:
                _ = parts.port
            except ValueError:
                raise ConfigError(name, "has an invalid port") from None
            db = parts.path.lstrip("/")
            if db and not db.isdigit():
                raise ConfigError(name, f"database must be a number, got {db!r}")
        return value


def _check_range(name: str, number: Any, min_value: Any, max_value: Any) -> None:
    if min_value is not None and number < min_value:
        raise ConfigError(name, f"must be at least {min_value}, got {number}")
    if max_value is not None and number > max_value:
        raise ConfigError(name, f"must be at most {max_value}, got {number}")


def _sqlite_config(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # WAL lets the gateway, the worker and beat share the file; the timeout turns
            # writer contention into waiting instead of "database is locked".
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


def parse_database_url(name: str, value: str) -> dict[str, Any]:
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        path = parts.path
        if parts.netloc:
            raise ConfigError(
                name, "sqlite URLs look like sqlite:///relative.db or sqlite:////abs.db"
            )
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ConfigError(name, "sqlite URL has no file path")
        return _sqlite_config(Path(path))
    if scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ConfigError(
            name, f"unsupported scheme {scheme!r} (use postgres://... or sqlite:///...)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(name, "has an invalid port") from None
    db_name = parts.path.lstrip("/")
    if not db_name:
        raise ConfigError(name, "has no database name (postgres://user@host:5432/NAME)")
    if not parts.hostname:
        raise ConfigError(name, "has no host (postgres://user@HOST:5432/name)")
    from urllib.parse import parse_qsl, unquote

    options = dict(parse_qsl(parts.query))
    conn_max_age = options.pop("conn_max_age", "0")
    try:
        conn_max_age_value: int | None = None if conn_max_age == "none" else int(conn_max_age)
    except ValueError:
        raise ConfigError(name, f"conn_max_age must be an integer, got {conn_max_age!r}") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(db_name),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname,
        "PORT": str(port or 5432),
        "CONN_MAX_AGE": conn_max_age_value,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
    }
