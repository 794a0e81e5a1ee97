from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import factory

from routing.models import AuthStyle, Deployment, Model, ModelPrice, Provider, ProviderKind

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"provider{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())
    kind = ProviderKind.OPENAI
    base_url = factory.LazyAttribute(lambda o: f"https://{o.slug}.example/v1")
    auth_style = AuthStyle.BEARER


class ModelFactory(factory.django.DjangoModelFactory):
    """A model with one price version from T0: $1 / $2 per million tokens, or
    ``price=(input_per_token, output_per_token)``; ``price=False`` for none."""

    class Meta:
        model = Model
        skip_postgeneration_save = True

    provider = factory.SubFactory(ProviderFactory)
    provider_model_name = factory.Sequence(lambda n: f"model-{n}")
    canonical_id = factory.LazyAttribute(lambda o: f"{o.provider.slug}/{o.provider_model_name}")
    display_name = factory.LazyAttribute(lambda o: o.provider_model_name)
    family = "test"
    context_window = 128_000
    max_output_tokens = 8_192

    @factory.post_generation
    def price(self, create: bool, extracted: object, **kwargs: object) -> None:
        if not create or extracted is False:
            return
        input_price, output_price = extracted or (Decimal("0.000001"), Decimal("0.000002"))
        ModelPrice.objects.create(
            model=self,
            effective_from=T0,
            input_per_token=input_price,
            output_per_token=output_price,
            source="factory",
        )


class DeploymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Deployment

    name = factory.Sequence(lambda n: f"deployment-{n}")
    model = factory.SubFactory(ModelFactory)
    provider = factory.LazyAttribute(lambda o: o.model.provider)
