# A node's routing policy becomes one document of the fields orgs.policy.PolicySpec declares
# (the same shape as a key's routing_policy and a request's megarouter object).

from decimal import Decimal

from django.db import migrations, models

LISTS = (
    "allowed_models",
    "blocked_models",
    "allowed_providers",
    "blocked_providers",
    "fallbacks",
    "allowed_regions",
)


def columns_to_document(apps, schema_editor):
    RoutingPolicy = apps.get_model("routing", "RoutingPolicy")
    for row in RoutingPolicy.objects.all():
        doc = {}
        if row.strategy:
            doc["strategy"] = row.strategy
        for name in LISTS:
            if getattr(row, name):
                doc[name] = list(getattr(row, name))
        if row.max_price_per_million is not None:
            doc["max_price_per_million"] = format(Decimal(row.max_price_per_million).normalize(), "f")
        for name in ("max_latency_ms", "quality_floor"):
            if getattr(row, name) is not None:
                doc[name] = getattr(row, name)
        if row.zero_data_retention_only is not None:
            doc["zero_data_retention_only"] = row.zero_data_retention_only
        if row.reference_model:
            doc["reference_model"] = row.reference_model
        row.document = doc
        row.save(update_fields=["document"])


def document_to_columns(apps, schema_editor):
    RoutingPolicy = apps.get_model("routing", "RoutingPolicy")
    for row in RoutingPolicy.objects.all():
        doc = row.document or {}
        row.strategy = doc.get("strategy", "")
        for name in LISTS:
            setattr(row, name, doc.get(name, []))
        price = doc.get("max_price_per_million")
        row.max_price_per_million = Decimal(price) if price is not None else None
        row.max_latency_ms = doc.get("max_latency_ms")
        row.quality_floor = doc.get("quality_floor")
        row.zero_data_retention_only = doc.get("zero_data_retention_only")
        row.reference_model = doc.get("reference_model", "")
        row.save()


class Migration(migrations.Migration):
    dependencies = [("routing", "0002_routing_policies")]

    operations = [
        migrations.AddField(
            model_name="routingpolicy",
            name="document",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.RunPython(columns_to_document, document_to_columns),
        *[
            migrations.RemoveField(model_name="routingpolicy", name=name)
            for name in (
                "strategy",
                *LISTS,
                "max_price_per_million",
                "max_latency_ms",
                "zero_data_retention_only",
                "quality_floor",
                "reference_model",
            )
        ],
    ]
