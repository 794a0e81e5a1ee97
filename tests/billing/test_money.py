"""The one money formatter: readable sub-cent amounts, no exponent, exact when asked."""

from decimal import Decimal

import pytest

from billing.money import plain_decimal, usd_exact, usd_text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("12.5", "$12.50"),
        ("1234.5678", "$1,234.57"),  # cents for amounts of a dollar and more ...
        ("1.797", "$1.797"),  # ... but never fewer than 4 significant digits
        ("0.0042", "$0.0042"),
        ("0.002219612345", "$0.00222"),  # rounded half-even to 4 significant digits
        ("0.000001", "$0.000001"),  # a $0.000001 budget is not "$0.00"
        ("-0.30", "\u2212$0.30"),
        ("0", "$0.00"),
        (Decimal("5E+1"), "$50.00"),  # never scientific notation
        ("999.995", "$1,000.00"),
        (0.1, "$0.10"),  # a float through its shortest repr
        ("-0.0000", "$0.00"),
        (None, ""),
        ("abc", ""),
        ("NaN", ""),
    ],
)
def test_usd_text(value, text):
    assert usd_text(value) == text


def test_signs_exact_values_and_form_fields():
    assert usd_text("250", sign=True) == "+$250.00"
    assert usd_text("-0.3", sign=True) == "\u2212$0.30"
    assert usd_exact("0.002219612345") == "$0.002219612345"
    assert usd_exact("-1234.5") == "\u2212$1,234.500000000000"
    assert plain_decimal(Decimal("5E+1")) == "50"
    assert plain_decimal(Decimal("0.000001000000")) == "0.000001"
    assert plain_decimal(Decimal("12.50")) == "12.5"
    assert plain_decimal(Decimal("-0")) == "0"
