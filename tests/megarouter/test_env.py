import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from megarouter.env import ConfigError, Env

ROOT = Path(__file__).resolve().parents[2]


def test_bool_accepts_common_spellings_and_rejects_others():
    env = Env({"A": "yes", "B": "0", "C": "maybe"})
    assert env.bool("A", False) is True
    assert env.bool("B", True) is False
    assert env.bool("MISSING", True) is True
    with pytest.raises(ConfigError, match=r"^C: expected a boolean .* got 'maybe'$"):
        env.bool("C", False)


def test_int_range_and_garbage():
    env = Env({"PORT": "80x", "N": "0", "OK": "42"})
    assert env.int("OK", 1) == 42
    with pytest.raises(ConfigError, match="^PORT: expected an integer, got '80x'$"):
        env.int("PORT", 8000)
    with pytest.raises(ConfigError, match="^N: must be at least 1, got 0$"):
        env.int("N", 5, min_value=1)


def test_float_rejects_nan_and_decimal_rejects_infinity():
    env = Env({"F": "nan", "D": "Infinity", "G": "0.10"})
    with pytest.raises(ConfigError, match="^F: expected a number, got NaN$"):
        env.float("F", 1.0)
    with pytest.raises(ConfigError, match="^D: expected a finite decimal"):
        env.decimal("D", Decimal(0))
    assert env.decimal("G", Decimal(0)) == Decimal("0.10")


def test_choice_and_required_str():
    env = Env({"MODE": "staging"})
    with pytest.raises(ConfigError, match="^MODE: expected one of a, b, got 'staging'$"):
        env.choice("MODE", "a", ("a", "b"))
    with pytest.raises(ConfigError, match="^NOPE: is required but not set$"):
        env.str("NOPE", required=True)


def test_list_splits_and_trims():
    assert Env({"L": " a, b ,,c "}).list("L") == ["a", "b", "c"]
    assert Env({}).list("L", ["x"]) == ["x"]


def test_database_url_postgres_is_parsed_exactly():
    env = Env({"DATABASE_URL": "postgres://us%40r:p%3Ass@db.example:6543/mega?sslmode=require"})
    config = env.database("DATABASE_URL", Path("/tmp/x.db"))
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"]) == ("us@r", "p:ss")
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.example", "6543", "mega")
    assert config["OPTIONS"] == {"sslmode": "require"}


def test_database_url_defaults_to_sqlite_file():
    config = Env({}).database("DATABASE_URL", Path("/tmp/mr.sqlite3"))
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == "/tmp/mr.sqlite3"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysqlx://h/db", "unsupported scheme 'mysqlx'"),
        ("postgres://host:notaport/db", "has an invalid port"),
        ("postgres://host:5432/", "has no database name"),
        ("postgres:///db", "has no host"),
        ("sqlite://", "sqlite URL has no file path"),
    ],
)
def test_database_url_errors_name_the_variable(url, message):
    with pytest.raises(ConfigError) as info:
        Env({"DATABASE_URL": url}).database("DATABASE_URL", Path("/tmp/x"))
    assert str(info.value).startswith("DATABASE_URL: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "unsupported scheme 'http'"),
        ("redis://:6379/0", "has no host"),
        ("redis://localhost:6379/abc", "database must be a number"),
    ],
)
def test_redis_url_errors(url, message):
    with pytest.raises(ConfigError, match=message):
        Env({"REDIS_URL": url}).redis_url("REDIS_URL")


def _manage(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_malformed_database_url_exits_with_one_line():
    result = _manage({"DATABASE_URL": "postgres://host:99999999/db"}, "check")
    assert result.returncode == 2
    assert result.stderr == "megarouter: configuration error: DATABASE_URL: has an invalid port\n"


def test_production_refuses_the_development_secret_key():
    result = _manage(
        {
            "MEGAROUTER_ENV": "production",
            "SECRET_KEY": "",
            "DATABASE_URL": "postgres://u@127.0.0.1:5432/x",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        },
        "check",
    )
    assert result.returncode == 2
    assert "SECRET_KEY: production needs a random secret" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_refuses_debug_on():
    result = _manage(
        {
            "MEGAROUTER_ENV": "production",
            "SECRET_KEY": "x" * 40,
            "DEBUG": "true",
            "DATABASE_URL": "postgres://u@127.0.0.1:5432/x",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        },
        "check",
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "megarouter: configuration error: DEBUG: must be off in production"
    )


def test_production_needs_postgres_and_redis():
    base = {"MEGAROUTER_ENV": "production", "SECRET_KEY": "x" * 40, "ALLOWED_HOSTS": "a.example"}
    no_pg = _manage(base, "check")
    assert "DATABASE_URL: production needs PostgreSQL" in no_pg.stderr
    no_redis = _manage({**base, "DATABASE_URL": "postgres://u@127.0.0.1:5432/x"}, "check")
    assert "REDIS_URL: production needs Redis" in no_redis.stderr
