from decimal import Decimal

from console.templatetags.console import signed_usd, usd


def test_money_filters_are_exact():
    assert usd(Decimal("0.300000000000")) == "$0.30"
    assert usd(Decimal("0.000512000000")) == "$0.000512"
    assert usd(Decimal("1234567.5")) == "$1,234,567.50"
    assert usd(Decimal("10")) == "$10.00"
    assert usd(Decimal("-2.25")) == "\u2212$2.25"
    assert usd(0) == "$0.00"
    assert usd("junk") == ""
    assert signed_usd(Decimal("250.000000000000")) == "+$250.00"
    assert signed_usd(Decimal("-0.9")) == "\u2212$0.90"
