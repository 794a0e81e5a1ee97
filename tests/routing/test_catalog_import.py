from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from routing.catalog_import import (
    BUNDLED_CATALOG,
    CatalogFormatError,
    catalog_entries_import,
    catalog_import,
    catalog_parse,
    derive_quality_tier,
    model_family,
    release_date_in_name,
)
from routing.models import CatalogVersion, Model, ModelPrice, Provider, QualityTier
from routing.selectors import price_at
from routing.services import model_override

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def _import_file(name: str, now: datetime = NOW):
    raw = (FIXTURES / name).read_bytes()
    return catalog_entries_import(parsed=catalog_parse(raw, today=now.date()), source=name, now=now)


def _state() -> tuple:
    """Everything an import may write, to compare before / after."""
    return (
        list(Provider.objects.order_by("slug").values()),
        list(Model.objects.order_by("canonical_id").values()),
        list(ModelPrice.objects.order_by("id").values()),
        list(CatalogVersion.objects.values()),
    )


def test_bundled_catalog_imports_300_plus_chat_models_and_second_run_changes_nothing():
    first = catalog_import()
    chat = Model.objects.filter(mode="chat")
    assert chat.count() >= 300
    assert first.added == Model.objects.count()
    assert first.updated == 0
    assert first.price_versions == first.added
    for slug in ("openai", "anthropic", "gemini", "deepseek", "xai", "dashscope", "moonshot"):
        assert chat.filter(provider__slug=slug).count() >= 5, slug
    assert chat.filter(provider__slug="mistral").count() >= 20

    gpt5 = Model.objects.get(canonical_id="openai/gpt-5")
    assert (gpt5.context_window, gpt5.max_output_tokens) == (272000, 128000)
    assert (gpt5.supports_tools, gpt5.supports_vision, gpt5.supports_json_schema) == (
        True,
        True,
        True,
    )
    assert gpt5.quality_tier == QualityTier.FRONTIER
    price = gpt5.prices.get()
    assert price.input_per_token == Decimal("0.00000125")
    assert price.output_per_token == Decimal("0.00001")
    assert price.cached_input_per_token == Decimal("0.000000125")
    opus = Model.objects.get(canonical_id="anthropic/claude-opus-4-5").prices.get()
    assert opus.cache_write_per_token == Decimal("0.00000625")
    assert Provider.objects.get(slug="anthropic").kind == "anthropic"
    assert Provider.objects.get(slug="dashscope").kind == "openai"
    # The file has no date field: a release date comes from a dated snapshot's name only.
    released = dict(Model.objects.values_list("canonical_id", "released_on"))
    assert released["openai/gpt-4o-2024-08-06"] == date(2024, 8, 6)
    assert released["anthropic/claude-haiku-4-5-20251001"] == date(2025, 10, 1)
    assert released["openai/gpt-5"] is None
    assert sum(1 for day in released.values() if day is not None) >= 100

    before = _state()
    second = catalog_import()
    assert (second.added, second.updated, second.unchanged) == (0, 0, first.added)
    assert second.skipped == first.skipped
    assert _state() == before


def test_small_litellm_file_maps_providers_and_counts():
    result = _import_file("litellm_small.json")
    assert (result.added, result.updated, result.unchanged, result.skipped) == (4, 0, 0, 4)
    assert result.skipped_reasons == {
        "duplicate of another key": 1,
        "mode image_generation": 1,
        "not a callable model (pricing bucket, fine-tune or regional variant)": 1,
        "provider not mapped": 1,
    }
    assert sorted(Model.objects.values_list("canonical_id", "mode", "status")) == [
        ("anthropic/claude-opus-4-5", "chat", "active"),
        ("deepseek/deepseek-chat", "chat", "deprecated"),
        ("openai/gpt-5", "chat", "active"),
        ("openai/text-embedding-3-small", "embedding", "active"),
    ]
    # The provider-prefixed key wins over the bare duplicate.
    deepseek = Model.objects.get(canonical_id="deepseek/deepseek-chat")
    assert deepseek.source_key == "deepseek/deepseek-chat"
    assert deepseek.prices.get().input_per_token == Decimal("0.00000028")
    assert deepseek.context_window == 131072


def test_changed_price_adds_a_version_and_keeps_the_old_one(tmp_path):
    _import_file("litellm_small.json")
    data = json.loads((FIXTURES / "litellm_small.json").read_text())
    data["gpt-5"]["output_cost_per_token"] = 1.2e-05
    data["gpt-5"]["max_output_tokens"] = 64000
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    later = NOW + timedelta(days=30)
    result = catalog_entries_import(
        parsed=catalog_parse(changed.read_bytes(), today=later.date()), source="x", now=later
    )
    assert (result.added, result.updated, result.unchanged) == (0, 1, 3)
    assert result.price_versions == 1
    versions = list(
        ModelPrice.objects.filter(model__canonical_id="openai/gpt-5")
        .order_by("effective_from")
        .values_list("effective_from", "output_per_token")
    )
    assert versions == [(NOW, Decimal("0.00001")), (later, Decimal("0.000012"))]
    assert Model.objects.get(canonical_id="openai/gpt-5").max_output_tokens == 64000
    assert price_at("openai/gpt-5", later - timedelta(seconds=1)).output_per_token == Decimal(
        "0.00001"
    )
    assert price_at("openai/gpt-5", later).output_per_token == Decimal("0.000012")


def test_operator_overrides_survive_reimport(tmp_path):
    _import_file("litellm_small.json")
    model = Model.objects.get(canonical_id="openai/gpt-5")
    model_override(model=model, fields={"quality_tier": 2, "supports_vision": False})
    result = _import_file("litellm_small.json", now=NOW + timedelta(days=1))
    assert (result.updated, result.unchanged) == (0, 4)
    model.refresh_from_db()
    assert (model.quality_tier, model.supports_vision) == (2, False)
    assert model.operator_overrides == ["quality_tier", "supports_vision"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["gpt-5"].__setitem__("input_cost_per_token", "cheap"),
            "'gpt-5' (line 8).input_cost_per_token: expected a number, got 'cheap'",
        ),
        (
            lambda d: d["claude-opus-4-5"].__setitem__("max_input_tokens", -5),
            "'claude-opus-4-5' (line 22).max_input_tokens: expected a whole number >= 0, got -5",
        ),
        (
            lambda d: d["gpt-5"].__setitem__("supports_vision", "yes"),
            "'gpt-5' (line 8).supports_vision: expected true or false, got 'yes'",
        ),
        (
            lambda d: d.__setitem__("broken", ["not", "an", "object"]),
            "'broken' (line 77): expected an object, got list",
        ),
    ],
)
def test_malformed_entry_is_refused_naming_key_and_line_and_nothing_changes(
    tmp_path, mutate, message
):
    _import_file("litellm_small.json")
    before = _state()
    data = json.loads((FIXTURES / "litellm_small.json").read_text())
    data["gpt-5"]["output_cost_per_token"] = 9e-05  # a valid change that must not land either
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data, indent=4))
    with pytest.raises(CatalogFormatError) as raised:
        catalog_import(str(bad))
    assert raised.value.errors == [message]
    assert _state() == before


def test_syntax_error_reports_line_and_column_through_the_command(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "gpt-5": {"mode": "chat",}\n}\n')
    with pytest.raises(CommandError, match=r"line 2 column 28: Expecting property name"):
        call_command("catalog_import", str(bad))
    assert Model.objects.count() == 0
    assert CatalogVersion.objects.count() == 0


def test_openrouter_format(tmp_path):
    result = _import_file("openrouter_models.json")
    assert (result.added, result.skipped) == (3, 2)
    assert result.skipped_reasons == {"variable price (router)": 1, "output is not text": 1}
    provider = Provider.objects.get(slug="openrouter")
    assert (provider.kind, provider.base_url) == ("openai", "https://openrouter.ai/api/v1")
    sonnet = Model.objects.get(canonical_id="openrouter/anthropic/claude-sonnet-4.5")
    assert sonnet.provider_model_name == "anthropic/claude-sonnet-4.5"
    assert sonnet.display_name == "Anthropic: Claude Sonnet 4.5"
    assert (sonnet.context_window, sonnet.max_output_tokens) == (1000000, 64000)
    assert (sonnet.supports_tools, sonnet.supports_vision, sonnet.supports_reasoning) == (
        True,
        True,
        True,
    )
    price = sonnet.prices.get()
    assert (price.input_per_token, price.output_per_token) == (
        Decimal("0.000003"),
        Decimal("0.000015"),
    )
    assert (price.cached_input_per_token, price.cache_write_per_token) == (
        Decimal("0.0000003"),
        Decimal("0.00000375"),
    )
    assert sonnet.released_on == date(2025, 9, 29)  # OpenRouter's created, 1759161676
    deepseek = Model.objects.get(canonical_id="openrouter/deepseek/deepseek-chat-v3.1")
    assert (deepseek.supports_vision, deepseek.supports_json_schema) == (False, False)
    assert deepseek.max_output_tokens is None
    again = _import_file("openrouter_models.json")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)


def test_openrouter_bad_price_names_the_entry(tmp_path):
    data = json.loads((FIXTURES / "openrouter_models.json").read_text())
    data["data"][1]["pricing"]["completion"] = "free"
    bad = tmp_path / "or.json"
    bad.write_text(json.dumps(data, indent=2))
    with pytest.raises(CatalogFormatError) as raised:
        catalog_import(str(bad))
    assert raised.value.errors == [
        "data[1] ('anthropic/claude-sonnet-4.5', line 56).pricing.completion: "
        "expected a price string such as \"0.000002\", got 'free'"
    ]
    assert Model.objects.count() == 0


def test_import_from_url():
    body = (FIXTURES / "openrouter_models.json").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = StringIO()
        url = f"http://127.0.0.1:{server.server_address[1]}/api/v1/models"
        call_command("catalog_import", url, stdout=out)
    finally:
        server.shutdown()
        server.server_close()
    assert out.getvalue() == "added 3, updated 0, unchanged 0, skipped 2\n"
    assert Model.objects.filter(provider__slug="openrouter").count() == 3


def test_unreachable_url_is_a_clear_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    with pytest.raises(CatalogFormatError) as raised:
        catalog_import(url)
    assert raised.value.errors[0].startswith(f"{url}: download failed: ")
    assert Model.objects.count() == 0


def test_bundled_file_ships_with_the_package():
    assert BUNDLED_CATALOG.is_file()
    assert (BUNDLED_CATALOG.parent / "SOURCE.md").read_text().count("1.108.7") == 1


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("gpt-5-mini", "gpt-5"),
        ("gpt-4o", "gpt-4o"),
        ("o3-mini", "o-series"),
        ("claude-opus-4-5", "claude"),
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude"),
        ("gemini-2.5-pro", "gemini"),
        ("accounts/fireworks/models/deepseek-r1", "deepseek"),
        ("grok-4.3", "grok"),
        ("qwen-max", "qwen"),
        ("kimi-k2.5", "kimi"),
        ("mistral-large-latest", "mistral"),
        ("openai/gpt-oss-120b", "gpt-oss"),
        ("palmyra-x5", "palmyra"),
    ],
)
def test_model_family(name, family):
    assert model_family(name) == family


@pytest.mark.parametrize(
    ("name", "released"),
    [
        ("gpt-4o-2024-08-06", date(2024, 8, 6)),
        ("claude-haiku-4-5-20251001", date(2025, 10, 1)),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", date(2024, 10, 22)),
        ("us.anthropic.claude-opus-4-1-20250805-v1:0", date(2025, 8, 5)),
        ("claude-haiku-4-5@20251001", date(2025, 10, 1)),
        ("openai/gpt-4o-2024-11-20", date(2024, 11, 20)),
        ("gpt-5", None),
        ("gemini-2.5-flash-preview-05-20", None),  # no year
        ("mistral-large-2407", None),
        ("gpt-4-0613", None),
        ("qwen-plus-2025-13-40", None),  # not a day
        ("model-20251001-extra", None),  # not at the end
    ],
)
def test_release_date_in_name(name, released):
    assert release_date_in_name(name) == released


@pytest.mark.parametrize(
    ("name", "output_per_million", "tier"),
    [
        ("gpt-5", "10", QualityTier.FRONTIER),
        ("gpt-5-mini", "2", QualityTier.STRONG),
        ("gemini-2.5-flash", "12", QualityTier.STRONG),  # small names never reach frontier
        ("deepseek-reasoner", "0.42", QualityTier.STRONG),  # large names reach strong
        ("gemini-2.5-pro", "10", QualityTier.FRONTIER),
        ("gpt-4o-mini", "0.6", QualityTier.STANDARD),
        ("llama-3.1-8b", "0.05", QualityTier.ECONOMY),
        ("free-model", "0", QualityTier.STANDARD),
    ],
)
def test_derive_quality_tier(name, output_per_million, tier):
    raw = json.dumps(
        {
            name: {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": 1e-09,
                "output_cost_per_token": float(Decimal(output_per_million) / 1_000_000),
            }
        }
    ).encode()
    (entry,) = catalog_parse(raw, today=NOW.date()).entries
    assert derive_quality_tier(entry) == tier


def test_an_embedding_models_vector_size_is_imported():
    raw = json.dumps(
        {
            "text-embedding-3-small": {
                "litellm_provider": "openai",
                "mode": "embedding",
                "input_cost_per_token": 2e-08,
                "output_cost_per_token": 0.0,
                "output_vector_size": 1536,
            },
            "gpt-x": {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 2e-06,
                "output_vector_size": 99,  # meaningless on a chat model: not kept
            },
        }
    ).encode()
    entries = {e.provider_model_name: e for e in catalog_parse(raw, today=NOW.date()).entries}
    assert entries["text-embedding-3-small"].output_vector_size == 1536
    assert entries["gpt-x"].output_vector_size is None
    with pytest.raises(CatalogFormatError, match=r"output_vector_size: expected a whole number"):
        catalog_parse(raw.replace(b"1536", b"-3"), today=NOW.date())
