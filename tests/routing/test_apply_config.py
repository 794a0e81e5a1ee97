from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
import time_machine
from django.core.management import CommandError, call_command

from routing.catalog import catalog_snapshot
from routing.catalog_import import catalog_entries_import, catalog_import, catalog_parse
from routing.crypto import CredentialSecret, decrypt_secret
from routing.models import (
    CatalogVersion,
    Credential,
    Deployment,
    Model,
    ModelPrice,
    Provider,
)
from routing.operator_config import ConfigFileError, config_apply_file, config_load
from routing.selectors import price_at

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ENV = {"DEEPSEEK_API_KEY": "sk-deepseek-SECRET", "SIM": "http://127.0.0.1:9999"}

OPERATOR_FILE = """
version = 1

[[providers]]
slug = "deepseek"
zero_data_retention = true
regions = ["cn", "global"]

[[providers]]
slug = "selfhosted"
name = "Our vLLM"
kind = "openai"
base_url = "http://10.0.0.5:8000/v1"

[[credentials]]
name = "deepseek-main"
provider = "deepseek"
api_key_env = "DEEPSEEK_API_KEY"

[[models]]
id = "deepseek/deepseek-chat"
quality_tier = "strong"
status = "active"
capabilities = { json_schema = true }
price = { input_per_million = "0.25", output_per_million = "0.40", effective_from = "2026-12-01T00:00:00Z" }

[[models]]
id = "selfhosted/llama-3.3-70b"
mode = "chat"
context_window = 131072
price = { input_per_token = "0", output_per_token = "0" }

[[deployments]]
name = "deepseek-direct"
model = "deepseek-chat"
credential = "deepseek-main"
weight = 2
rpm_limit = 500

[[deployments]]
name = "llama-local"
model = "selfhosted/llama-3.3-70b"
base_url = "${SIM}/openai/v1"
"""


def _base_catalog() -> None:
    raw = (FIXTURES / "litellm_small.json").read_bytes()
    catalog_entries_import(parsed=catalog_parse(raw, today=NOW.date()), source="test", now=NOW)


def _write(tmp_path: Path, text: str, name: str = "operator.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _state() -> tuple:
    return (
        list(Provider.objects.order_by("slug").values()),
        list(Model.objects.order_by("canonical_id").values()),
        list(ModelPrice.objects.order_by("id").values()),
        list(Credential.objects.order_by("name").values()),
        list(Deployment.objects.order_by("name").values()),
        list(CatalogVersion.objects.values()),
    )


def test_apply_creates_everything_then_a_second_run_changes_nothing(tmp_path):
    _base_catalog()
    path = _write(tmp_path, OPERATOR_FILE)
    result = config_apply_file(path, environ=ENV)
    assert result.changes == [
        "provider deepseek: updated zero_data_retention, regions",
        "provider selfhosted: created",
        "credential deepseek-main: created",
        "model deepseek/deepseek-chat: updated status, quality_tier, supports_json_schema, price",
        "model selfhosted/llama-3.3-70b: created",
        "deployment deepseek-direct: created",
        "deployment llama-local: created",
    ]
    assert result.unchanged == 0

    deepseek = Provider.objects.get(slug="deepseek")
    assert (deepseek.zero_data_retention, deepseek.regions) == (True, ["cn", "global"])
    assert deepseek.base_url == "https://api.deepseek.com/v1"  # untouched
    model = Model.objects.get(canonical_id="deepseek/deepseek-chat")
    assert (model.quality_tier, model.status, model.supports_json_schema) == (3, "active", True)
    assert model.operator_overrides == [
        "price",
        "quality_tier",
        "status",
        "supports_json_schema",
    ]
    cutover = datetime(2026, 12, 1, tzinfo=UTC)
    assert price_at(model.canonical_id, cutover - timedelta(seconds=1)).input_per_token == (
        Decimal("0.00000028")
    )
    assert price_at(model.canonical_id, cutover).input_per_token == Decimal("0.00000025")
    credential = Credential.objects.get(name="deepseek-main")
    assert "sk-deepseek-SECRET" not in credential.ciphertext
    assert decrypt_secret(credential.ciphertext) == CredentialSecret(api_key="sk-deepseek-SECRET")
    assert credential.source == "api_key=$DEEPSEEK_API_KEY"
    direct = Deployment.objects.get(name="deepseek-direct")
    assert (direct.model.canonical_id, direct.provider.slug, direct.credential.name) == (
        "deepseek/deepseek-chat",
        "deepseek",
        "deepseek-main",
    )
    assert (direct.weight, direct.rpm_limit, direct.tpm_limit, direct.enabled) == (
        2,
        500,
        None,
        True,
    )
    assert Deployment.objects.get(name="llama-local").base_url == "http://127.0.0.1:9999/openai/v1"

    before = _state()
    again = config_apply_file(path, environ=ENV)
    assert again.changes == []
    assert again.unchanged == 7
    assert _state() == before

    # A re-import of the catalog leaves the operator's values alone.
    _base_catalog()
    assert _state()[1] == before[1]


def test_changed_value_and_rotated_secret_are_reported(tmp_path):
    _base_catalog()
    config_apply_file(_write(tmp_path, OPERATOR_FILE), environ=ENV)
    changed = OPERATOR_FILE.replace("weight = 2", "weight = 5")
    result = config_apply_file(
        _write(tmp_path, changed), environ={**ENV, "DEEPSEEK_API_KEY": "sk-rotated"}
    )
    assert result.changes == [
        "credential deepseek-main: updated secret",
        "deployment deepseek-direct: updated weight",
    ]
    credential = Credential.objects.get(name="deepseek-main")
    assert decrypt_secret(credential.ciphertext).api_key == "sk-rotated"
    assert (
        catalog_snapshot(max_age=0)
        .deployments_by_id[Deployment.objects.get(name="deepseek-direct").pk]
        .weight
        == 5
    )


@pytest.mark.parametrize(
    ("edit", "errors"),
    [
        (
            lambda t: t,
            ["credentials[0].api_key_env: environment variable DEEPSEEK_API_KEY is not set"],
        ),
        (
            lambda t: t.replace("weight = 2", "weight = -1"),
            [
                "credentials[0].api_key_env: environment variable DEEPSEEK_API_KEY is not set",
                "deployments[0].weight: expected a whole number >= 0, got -1",
            ],
        ),
        (
            lambda t: t + '\n[[policies]]\nname = "x"\n',
            [
                # [[policies]] is the routing engine's section (tests/routing/test_policies.py)
                "credentials[0].api_key_env: environment variable DEEPSEEK_API_KEY is not set",
                "policies[0].organization: is required (an organization slug)",
            ],
        ),
        (
            lambda t: t.replace("rpm_limit = 500", "timeouts = { ttft_s = 0, total_s = 5 }"),
            [
                "credentials[0].api_key_env: environment variable DEEPSEEK_API_KEY is not set",
                "deployments[0].timeouts.ttft_s: expected seconds in (0, 3600], got 0",
                "deployments[0].timeouts.total_s: unknown timeout "
                "(known: ttft_s, stall_s, attempt_s)",
            ],
        ),
        (
            lambda t: t.replace('model = "deepseek-chat"', 'model = "gpt-9"'),
            [
                "credentials[0].api_key_env: environment variable DEEPSEEK_API_KEY is not set",
                "deployments[0].model: unknown model 'gpt-9' (run catalog_import first?)",
            ],
        ),
        (
            lambda t: t.replace('quality_tier = "strong"', "quality_tier = 9").replace(
                'input_per_million = "0.25"', 'input_per_million = "cheap"'
            ),
            [
                "credentials[0].api_key_env: environment variable DEEPSEEK_API_KEY is not set",
                "models[0].quality_tier: expected 1 or 'economy', 2 or 'standard', "
                "3 or 'strong', 4 or 'frontier'; got 9",
                "models[0].price.input_per_million: expected a decimal number, got 'cheap'",
            ],
        ),
    ],
)
def test_bad_file_is_refused_with_the_path_and_nothing_changes(tmp_path, edit, errors):
    _base_catalog()
    before = _state()
    env = {"SIM": "http://127.0.0.1:9999"}  # DEEPSEEK_API_KEY missing
    with pytest.raises(ConfigFileError) as raised:
        config_apply_file(_write(tmp_path, edit(OPERATOR_FILE)), environ=env)
    assert raised.value.errors == errors
    assert _state() == before


def test_timeouts_per_model_and_per_deployment_reach_the_route(tmp_path):
    """A model's timeouts apply to its deployments; a deployment's own win, key by key."""
    _base_catalog()
    text = OPERATOR_FILE.replace(
        'status = "active"\n', 'status = "active"\ntimeouts = { ttft_s = 4, attempt_s = 30 }\n'
    ).replace("rpm_limit = 500", "rpm_limit = 500\ntimeouts = { ttft_s = 2.5 }")
    config_apply_file(_write(tmp_path, text), environ=ENV)
    direct = Deployment.objects.get(name="deepseek-direct")
    assert direct.timeouts == {"ttft_s": 2.5}
    assert direct.model.timeouts == {"ttft_s": 4.0, "attempt_s": 30.0}
    info = catalog_snapshot(max_age=0).deployments_by_id[direct.pk]
    assert dict(info.timeouts) == {"ttft_s": 2.5, "attempt_s": 30.0}
    cleared = text.replace("timeouts = { ttft_s = 2.5 }", "timeouts = {}")
    result = config_apply_file(_write(tmp_path, cleared), environ=ENV)
    assert "deployment deepseek-direct: updated timeouts" in result.changes
    info = catalog_snapshot(max_age=0).deployments_by_id[direct.pk]
    assert dict(info.timeouts) == {"ttft_s": 4.0, "attempt_s": 30.0}


def test_interpolation_without_default_must_be_set(tmp_path):
    _base_catalog()
    with pytest.raises(ConfigFileError) as raised:
        config_apply_file(_write(tmp_path, OPERATOR_FILE), environ={"DEEPSEEK_API_KEY": "sk"})
    assert raised.value.errors == ["deployments[1].base_url: environment variable SIM is not set"]
    assert Deployment.objects.count() == 0


def test_yaml_and_json_files_apply_the_same(tmp_path):
    _base_catalog()
    document = {
        "providers": [{"slug": "deepseek", "zero_data_retention": True}],
        "deployments": [{"name": "ds", "model": "deepseek/deepseek-chat", "priority": 2}],
    }
    import yaml

    yaml_path = _write(tmp_path, yaml.safe_dump(document), "operator.yaml")
    assert config_apply_file(yaml_path, environ={}).changes == [
        "provider deepseek: updated zero_data_retention",
        "deployment ds: created",
    ]
    json_path = _write(tmp_path, json.dumps(document), "operator.json")
    assert config_apply_file(json_path, environ={}).changes == []
    assert Deployment.objects.get(name="ds").priority == 2


def test_command_prints_changes_and_refuses_bad_files(tmp_path, monkeypatch):
    _base_catalog()
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-x")
    monkeypatch.setenv("SIM", "http://127.0.0.1:1")
    out = StringIO()
    call_command("apply_config", str(_write(tmp_path, OPERATOR_FILE)), stdout=out)
    assert out.getvalue().splitlines()[-1] == "7 changed, 0 unchanged"
    out = StringIO()
    call_command("apply_config", str(_write(tmp_path, OPERATOR_FILE)), stdout=out)
    assert out.getvalue() == "0 changed, 7 unchanged\n"
    with pytest.raises(CommandError, match=r"operator\.txt: use a \.toml, \.yaml, \.yml or \.json"):
        call_command("apply_config", str(_write(tmp_path, "x", "operator.txt")))
    with pytest.raises(CommandError, match=r"Expected '=' after a key"):
        call_command("apply_config", str(_write(tmp_path, "version 1\n")))


def _apply_demo(monkeypatch, when):
    """The bundled catalog imported and the demo file applied, as ``make run`` does on ``when``."""
    monkeypatch.setenv("SIMULATOR_URL", "http://127.0.0.1:9123")
    with time_machine.travel(when, tick=False):
        catalog_import()
        result = config_apply_file(ROOT / "config" / "demo.toml")
        snapshot = catalog_snapshot(max_age=0)
    return result, snapshot


# The bundled catalog deprecates anthropic/claude-sonnet-4-5 on 2026-11-30 (Bedrock's copy on
# 2027-04-08): the demo is applied once before that date and once after it.
BEFORE_SONNET_4_5_ENDS = datetime(2026, 11, 15, 12, tzinfo=UTC)
AFTER_SONNET_4_5_ENDS = datetime(2026, 12, 15, 12, tzinfo=UTC)


def test_demo_file_puts_every_main_provider_model_on_the_simulator(monkeypatch):
    result, snapshot = _apply_demo(monkeypatch, BEFORE_SONNET_4_5_ENDS)
    deployments = Deployment.objects.select_related("model", "provider")
    assert len(result.changes) == deployments.count() + 2  # + the two credentials
    expected_base = {
        "openai": "http://127.0.0.1:9123/openai/v1",
        "anthropic": "http://127.0.0.1:9123/anthropic",
        "gemini": "http://127.0.0.1:9123/gemini",
        "azure": "http://127.0.0.1:9123/azure",
        "bedrock": "http://127.0.0.1:9123/bedrock",
    }
    main = ("openai", "anthropic", "gemini", "deepseek", "xai", "mistral", "dashscope", "moonshot")
    chat_models = Model.objects.filter(provider__slug__in=main, mode="chat", status="active")
    assert chat_models.count() >= 200
    on_simulator = {d.model.canonical_id for d in deployments if d.provider == d.model.provider}
    assert set(chat_models.values_list("canonical_id", flat=True)) <= on_simulator
    for deployment in deployments:
        assert deployment.base_url == expected_base[deployment.provider.kind]
    assert not deployments.exclude(model__status="active").exists()  # current models only
    azure = deployments.get(name="sim-azure-openai-gpt-4o")
    assert (azure.provider.kind, azure.api_version, azure.region, azure.priority) == (
        "azure",
        "2024-10-21",
        "eastus",
        1,
    )
    assert azure.provider_model_name == "gpt-4o"  # the Azure deployment name
    bedrock = deployments.get(name="sim-bedrock-anthropic-claude-sonnet-4-5")
    assert (bedrock.provider.kind, bedrock.region, bedrock.credential.kind) == (
        "bedrock",
        "us-east-1",
        "aws",
    )
    assert bedrock.provider_model_name == "anthropic.claude-sonnet-4-5-20250929-v1:0"
    # Every current Anthropic model that Bedrock also lists is on both, under Bedrock's name.
    on_bedrock = {
        d.model.canonical_id: d.provider_model_name
        for d in deployments
        if d.provider.slug == "bedrock"
    }
    assert on_bedrock["anthropic/claude-haiku-4-5"] == "anthropic.claude-haiku-4-5-20251001-v1:0"
    assert on_bedrock["anthropic/claude-sonnet-4-6"] == "anthropic.claude-sonnet-4-6"
    assert set(on_bedrock) <= on_simulator
    kinds = {d.kind for d in snapshot.deployments_for("claude-sonnet-4-5")}
    assert kinds == {"anthropic", "bedrock"}
    aws = snapshot.credential_secret(bedrock.credential_id)
    assert (aws.aws_access_key_id, aws.aws_secret_access_key) == (
        "AKIASIMULATORDEMO",
        "simulator-demo-secret",
    )
    with time_machine.travel(BEFORE_SONNET_4_5_ENDS, tick=False):
        assert config_apply_file(ROOT / "config" / "demo.toml").changes == []


def test_the_demo_key_can_call_300_current_models_and_no_deprecated_one(monkeypatch):
    """What /v1/models lists for the demo key (a key without a policy: every model with an
    enabled deployment), on the day the bundled catalog is read against elsewhere."""
    _, snapshot = _apply_demo(monkeypatch, BEFORE_SONNET_4_5_ENDS)
    served = sorted(snapshot.deployments)
    assert len(served) >= 300
    day = BEFORE_SONNET_4_5_ENDS.date()
    assert [m for m in served if snapshot.models[m].deprecated_on(day)] == []
    providers = {
        "openai", "anthropic", "gemini", "deepseek", "xai", "mistral", "dashscope",
        "moonshot", "zai", "groq", "together_ai", "cerebras",
    }  # fmt: skip
    assert {snapshot.models[m].provider for m in served} == providers
    # every current model of those providers (chat, embedding, completion) but the three the
    # file excludes (catalog entries that are no chat model to route to)
    (excluded,) = [
        s["exclude"]
        for s in config_load(ROOT / "config" / "demo.toml")["deployment_sets"]
        if "exclude" in s
    ]
    assert len(excluded) == 3
    current = [
        m.canonical_id
        for m in snapshot.models.values()
        if m.provider in providers and not m.deprecated_on(day) and m.canonical_id not in excluded
    ]
    assert sorted(current) == served


def test_demo_applied_after_a_deprecation_date_leaves_that_model_out(monkeypatch):
    _, snapshot = _apply_demo(monkeypatch, AFTER_SONNET_4_5_ENDS)
    assert Model.objects.get(canonical_id="anthropic/claude-sonnet-4-5").status == "deprecated"
    assert snapshot.deployments_for("anthropic/claude-sonnet-4-5") == ()
    # its successor is where the demo's examples go, on both providers
    kinds = {d.kind for d in snapshot.deployments_for("anthropic/claude-sonnet-4-6")}
    assert kinds == {"anthropic", "bedrock"}


SET_FILE = """
[[providers]]
slug = "selfhosted"
kind = "openai"

[[models]]
id = "deepseek/deepseek-chat"        # deprecated in the catalog, revived here
status = "active"

[[models]]
id = "selfhosted/qwen3-32b"
price = { input_per_million = "0.1", output_per_million = "0.3" }

[[deployment_sets]]
name = "sim"
providers = ["deepseek", "selfhosted", "anthropic"]
exclude = ["anthropic/claude-opus-4-5"]
base_url = "http://127.0.0.1:9100/openai/v1"
rpm_limit = 100
"""


def test_deployment_sets_see_the_models_section_of_the_same_file(tmp_path):
    _base_catalog()
    path = _write(tmp_path, SET_FILE)
    first = config_apply_file(path, environ={})
    assert first.changes == [
        "provider selfhosted: created",
        "model deepseek/deepseek-chat: updated status",
        "model selfhosted/qwen3-32b: created",
        "deployment sim-deepseek-deepseek-chat: created",
        "deployment sim-selfhosted-qwen3-32b: created",
    ]
    assert sorted(Deployment.objects.values_list("name", "rpm_limit", "base_url")) == [
        ("sim-deepseek-deepseek-chat", 100, "http://127.0.0.1:9100/openai/v1"),
        ("sim-selfhosted-qwen3-32b", 100, "http://127.0.0.1:9100/openai/v1"),
    ]
    before = _state()
    assert config_apply_file(path, environ={}).changes == []
    assert _state() == before


def test_the_models_the_docs_examples_name_have_no_deprecation_date_and_a_demo_deployment(
    monkeypatch,
):
    """A newcomer copies these: each catalog id that docs/api.md or the README names is one
    the bundled catalog announces no end for, and the demo serves it (checked on the catalog,
    not the calendar: a newer catalog that deprecates one fails here, when it is updated)."""
    import re

    _, snapshot = _apply_demo(monkeypatch, BEFORE_SONNET_4_5_ENDS)
    text = (ROOT / "docs" / "api.md").read_text() + (ROOT / "README.md").read_text()
    named = set(re.findall(r"\b(?:openai|anthropic|gemini)/[a-z0-9][a-z0-9.-]*[a-z0-9]", text))
    in_catalog = {m for m in named if m in snapshot.models}
    assert len(in_catalog) >= 5
    for model_id in sorted(in_catalog):
        model = snapshot.models[model_id]
        assert model.deprecation_date is None, model_id
        assert snapshot.deployments_for(model_id), model_id


def test_a_models_vector_size_is_set_in_the_operator_file(tmp_path):
    _base_catalog()
    text = """version = 1
[[providers]]
slug = "selfhosted"
name = "Our vLLM"
kind = "openai"
base_url = "http://10.0.0.5:8000/v1"

[[models]]
id = "selfhosted/bge-m3"
mode = "embedding"
output_vector_size = 1024
price = { input_per_token = "0", output_per_token = "0" }
"""
    config_apply_file(_write(tmp_path, text), environ=ENV)
    model = Model.objects.get(canonical_id="selfhosted/bge-m3")
    assert (model.mode, model.output_vector_size) == ("embedding", 1024)
    with pytest.raises(ConfigFileError, match=r"models\[0\]\.output_vector_size"):
        config_apply_file(_write(tmp_path, text.replace("1024", "0"), "bad.toml"), environ=ENV)


def test_a_models_release_date_is_set_in_the_operator_file(tmp_path):
    _base_catalog()
    text = """version = 1
[[models]]
id = "deepseek/deepseek-chat"
released_on = 2024-12-26
"""
    config_apply_file(_write(tmp_path, text), environ=ENV)
    model = Model.objects.get(canonical_id="deepseek/deepseek-chat")
    assert (model.released_on, model.operator_overrides) == (
        datetime(2024, 12, 26).date(),
        ["released_on"],
    )
    quoted = text.replace("2024-12-26", '"2024-12-27"')
    config_apply_file(_write(tmp_path, quoted, "quoted.toml"), environ=ENV)  # YAML and JSON
    assert Model.objects.get(pk=model.pk).released_on == datetime(2024, 12, 27).date()
    before = _state()
    for bad, shown in (
        ('"26 Dec 2024"', "'26 Dec 2024'"),
        (
            "2024-12-26T10:00:00Z",
            "datetime.datetime(2024, 12, 26, 10, 0, tzinfo=datetime.timezone.utc)",
        ),
        ("20241226", "20241226"),
    ):
        with pytest.raises(ConfigFileError) as raised:
            config_apply_file(_write(tmp_path, text.replace("2024-12-26", bad), "bad.toml"))
        assert raised.value.errors == [
            f"models[0].released_on: expected a date (YYYY-MM-DD), got {shown}"
        ]
    assert _state() == before
