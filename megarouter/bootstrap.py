"""Turns a configuration error at start-up into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from megarouter.env import ConfigError

T = TypeVar("T")


def exit_on_config_error(start: Callable[[], T]) -> T:
    try:
        return start()
    except ConfigError as exc:
        sys.stderr.write(f"megarouter: configuration error: {exc}\n")
        raise SystemExit(2) from None
