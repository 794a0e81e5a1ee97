"""Admin for the catalog. Saves go through the catalog services where they exist, and every
change bumps the catalog version. Credential secrets are write-only: the form takes a new
secret, no page ever shows the stored one (nor its ciphertext)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from routing.crypto import CredentialSecret, encrypt_secret
from routing.models import (
    Credential,
    CredentialKind,
    Deployment,
    Model,
    ModelPrice,
    Provider,
)
from routing.services import catalog_version_bump


class _BumpsVersion(admin.ModelAdmin):
    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        catalog_version_bump()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        super().delete_model(request, obj)
        catalog_version_bump()

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        super().delete_queryset(request, queryset)
        catalog_version_bump()


@admin.register(Provider)
class ProviderAdmin(_BumpsVersion):
    list_display = ("slug", "name", "kind", "base_url", "zero_data_retention", "enabled")
    list_filter = ("kind", "zero_data_retention", "enabled")
    search_fields = ("slug", "name")


class ModelPriceInline(admin.TabularInline):
    model = ModelPrice
    extra = 0
    can_delete = False
    fields = (
        "effective_from",
        "input_per_token",
        "output_per_token",
        "cached_input_per_token",
        "cache_write_per_token",
        "source",
    )
    readonly_fields = fields
    ordering = ("-effective_from",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Model)
class ModelAdmin(_BumpsVersion):
    list_display = (
        "canonical_id",
        "provider",
        "mode",
        "quality_tier",
        "context_window",
        "supports_tools",
        "supports_vision",
        "status",
    )
    list_filter = ("provider", "mode", "quality_tier", "status", "supports_tools")
    search_fields = ("canonical_id", "display_name", "family")
    list_select_related = ("provider",)
    readonly_fields = ("source", "source_key", "operator_overrides", "created_at", "updated_at")
    inlines = [ModelPriceInline]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Versions are immutable: new ones come from catalog_import or the operator file."""

    list_display = ("model", "effective_from", "input_per_token", "output_per_token", "source")
    list_select_related = ("model",)
    search_fields = ("model__canonical_id",)
    date_hierarchy = "effective_from"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class CredentialForm(forms.ModelForm):
    """Write-only secret fields: left empty, the stored secret is kept."""

    api_key = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), strip=True
    )
    aws_access_key_id = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), strip=True
    )
    aws_secret_access_key = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), strip=True
    )
    aws_session_token = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), strip=True
    )

    class Meta:
        model = Credential
        fields = ("name", "kind", "provider")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        new = bool(
            data.get("api_key")
            or data.get("aws_access_key_id")
            or data.get("aws_secret_access_key")
        )
        if not self.instance.pk and not new:
            raise forms.ValidationError("Enter the secret.")
        if new:
            if data.get("kind") == CredentialKind.API_KEY and not data.get("api_key"):
                self.add_error("api_key", "An API key credential needs the key.")
            if data.get("kind") == CredentialKind.AWS and not (
                data.get("aws_access_key_id") and data.get("aws_secret_access_key")
            ):
                self.add_error("aws_secret_access_key", "AWS needs the key id and the secret.")
        return data

    def save(self, commit: bool = True) -> Credential:
        credential = super().save(commit=False)
        data = self.cleaned_data
        if data.get("api_key") or data.get("aws_access_key_id"):
            credential.secret_updated_at = timezone.now()
            credential.ciphertext = encrypt_secret(
                CredentialSecret(
                    api_key=data.get("api_key") or "",
                    aws_access_key_id=data.get("aws_access_key_id") or None,
                    aws_secret_access_key=data.get("aws_secret_access_key") or None,
                    aws_session_token=data.get("aws_session_token") or None,
                )
            )
        if commit:
            credential.save()
        return credential


@admin.register(Credential)
class CredentialAdmin(_BumpsVersion):
    form = CredentialForm
    list_display = ("name", "kind", "provider", "source", "secret_updated_at")
    list_select_related = ("provider",)
    readonly_fields = ("source", "created_at", "updated_at", "secret_updated_at")
    search_fields = ("name",)


@admin.register(Deployment)
class DeploymentAdmin(_BumpsVersion):
    list_display = (
        "name",
        "model",
        "provider",
        "region",
        "weight",
        "priority",
        "rpm_limit",
        "tpm_limit",
        "enabled",
    )
    list_filter = ("provider", "enabled")
    list_select_related = ("model", "provider")
    search_fields = ("name", "model__canonical_id")
    raw_id_fields = ("model",)
