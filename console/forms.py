"""Console forms: they parse and validate input shapes only. Business rules (slug uniqueness,
who may grant which role, key limits...) live in the services, whose ``InvalidInput`` field
errors are put back on the form by ``add_service_errors``."""

from __future__ import annotations

import zoneinfo
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.password_validation import password_validators_help_texts
from django.utils.functional import lazy

from billing.models import BudgetMode, BudgetPeriod
from identity.selectors import password_login_refusal
from orgs import secrets
from orgs.errors import InvalidInput
from orgs.models import Node, Organization, Role
from orgs.policy import RULES, STRATEGY_LABELS, PolicyError, PolicySpec, Rule
from orgs.roles import SCOPE_DESCRIPTIONS, SCOPES
from orgs.selectors import INVITATION_REFUSALS


def add_service_errors(
    form: forms.Form, exc: InvalidInput, field_map: dict[str, str] | None = None
) -> None:
    """Copy a service's per-field errors onto ``form`` (unknown fields become form errors)."""
    field_map = field_map or {}
    for name, messages in exc.errors.items():
        target = field_map.get(name, name)
        for message in messages:
            form.add_error(target if target in form.fields else None, message)
            if target in form.fields:
                form.fields[target].widget.attrs["aria-invalid"] = "true"


def lines(value: str) -> list[str]:
    """Entries of a textarea: one per line or comma separated, blanks dropped."""
    out: list[str] = []
    for line in value.replace(",", "\n").splitlines():
        if line.strip():
            out.append(line.strip())
    return out


def _node_label(node: Node) -> str:
    indent = "\u2003" * max(node.depth - 1, 0)
    return f"{indent}{node.name} ({node.get_kind_display().lower()})"


class NodeChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return _node_label(obj)


ROLE_CHOICES = [(r.value, r.label) for r in Role]


class StyledForm(forms.Form):
    """Links each input to its help and error text (``aria-describedby``) and marks invalid
    inputs (``aria-invalid``), so screen readers announce them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, form_field in self.fields.items():
            auto_id = self[name].auto_id
            form_field.widget.attrs.setdefault(
                "aria-describedby", f"{auto_id}_help {auto_id}_errors"
            )

    def full_clean(self) -> None:
        super().full_clean()
        for name in self.errors:
            if name in self.fields:
                self.fields[name].widget.attrs["aria-invalid"] = "true"


class OrganizationCreateForm(StyledForm):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=80,
        help_text="Used in URLs: letters, numbers, hyphens.",
        widget=forms.TextInput(attrs={"data-slug-from": "id_name"}),
    )
    time_zone = forms.ChoiceField(
        choices=[], initial="UTC", help_text="Budget periods and reports follow this zone."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        zones = sorted(zoneinfo.available_timezones())
        self.fields["time_zone"].choices = [(z, z) for z in zones]


class OrganizationUpdateForm(OrganizationCreateForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["slug"]


class NodeCreateForm(StyledForm):
    parent = NodeChoiceField(queryset=Node.objects.none(), empty_label=None)
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=80,
        help_text="Used in URLs; unique among its siblings.",
        widget=forms.TextInput(attrs={"data-slug-from": "id_name"}),
    )

    def __init__(self, *args: Any, parents: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["parent"].queryset = parents


class NodeRenameForm(StyledForm):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=80)


class NodeMoveForm(StyledForm):
    parent = NodeChoiceField(queryset=Node.objects.none(), label="New parent")

    def __init__(self, *args: Any, parents: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["parent"].queryset = parents


class NodeArchiveForm(StyledForm):
    revoke_keys = forms.BooleanField(
        required=False,
        label="Also revoke the active API keys in this subtree",
        help_text="Archiving refuses while keys are active unless this is ticked.",
    )


class MemberAddForm(StyledForm):
    username = forms.CharField(max_length=150, help_text="An existing user of this server.")
    node = NodeChoiceField(queryset=Node.objects.none(), empty_label=None, label="Place")
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Role.DEVELOPER)

    def __init__(self, *args: Any, nodes: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes


class MemberRoleForm(StyledForm):
    role = forms.ChoiceField(choices=ROLE_CHOICES)


class InvitationForm(StyledForm):
    email = forms.EmailField()
    node = NodeChoiceField(queryset=Node.objects.none(), empty_label=None, label="Place")
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Role.DEVELOPER)
    ttl_hours = forms.IntegerField(
        min_value=1, max_value=720, initial=168, label="Valid for (hours)"
    )

    def __init__(self, *args: Any, nodes: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes


class InvitationAcceptForm(StyledForm):
    token = forms.CharField(
        max_length=300, help_text="The token (mri_...) or the link from the invitation email."
    )

    def clean_token(self) -> str:
        """The token itself, also when the whole link was pasted."""
        value = self.cleaned_data["token"].strip().rstrip("/").rsplit("/", 1)[-1]
        if secrets.prefix_of(value, secrets.INVITATION) is None:
            raise forms.ValidationError(INVITATION_REFUSALS["invalid"])
        return value


# What AUTH_PASSWORD_VALIDATORS ask, read when a form renders.
_password_rules = lazy(lambda: " ".join(password_validators_help_texts()), str)


class InvitationSignUpForm(StyledForm):
    """A new person's account from an invitation: the email is the invitation's. The password
    rules (Django's validators) are the service's; here only that both entries match."""

    name = forms.CharField(max_length=150, label="Your name")
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_password_rules(),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        first, second = data.get("password1"), data.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ.")
        return data


class _KeyFields(StyledForm):
    name = forms.CharField(max_length=200)
    allowed_models = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One model id or pattern per line (openai/*). Empty: every model.",
    )
    rpm_limit = forms.IntegerField(
        required=False, min_value=1, label="Requests per minute", help_text="Empty: no limit."
    )
    tpm_limit = forms.IntegerField(
        required=False, min_value=1, label="Tokens per minute", help_text="Empty: no limit."
    )
    ip_allowlist = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="IP allowlist",
        help_text="One address or CIDR per line. Empty: any address.",
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Empty: never.",
    )

    def service_fields(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "allowed_models": lines(data["allowed_models"]),
            "ip_allowlist": lines(data["ip_allowlist"]),
            "rpm_limit": data["rpm_limit"],
            "tpm_limit": data["tpm_limit"],
            "expires_at": data["expires_at"],
        }


class ApiKeyCreateForm(_KeyFields):
    project = NodeChoiceField(queryset=Node.objects.none(), empty_label=None)
    field_order = ["project", "name"]

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects


class ApiKeyUpdateForm(_KeyFields):
    pass


class ApiKeyRotateForm(StyledForm):
    grace_hours = forms.IntegerField(
        min_value=0,
        max_value=720,
        initial=0,
        label="Keep the old secret working for (hours)",
        help_text="0 ends the old secret now; at most 720 (30 days).",
    )


class BudgetCreateForm(StyledForm):
    target = forms.ChoiceField(
        label="Applies to", help_text="The organization, a place in the tree, a member or a key."
    )
    tag = forms.CharField(
        max_length=200,
        required=False,
        label="Request tag",
        help_text="For “Request tags”: key=value, as requests carry it (feature=search).",
    )
    name = forms.CharField(max_length=200, required=False)
    period = forms.ChoiceField(choices=[])
    limit_usd = forms.DecimalField(
        label="Limit (USD)", min_value=0, max_digits=18, decimal_places=6
    )
    mode = forms.ChoiceField(choices=[])
    thresholds = forms.CharField(
        initial="50, 80, 100",
        help_text="Percentages of the limit that raise an alert, comma separated.",
    )
    notify_emails = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Alert emails",
        help_text="One address per line.",
    )

    def __init__(self, *args: Any, targets: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = targets
        self.fields["period"].choices = BudgetPeriod.choices
        self.fields["period"].initial = BudgetPeriod.MONTHLY
        self.fields["mode"].choices = BudgetMode.choices

    def clean_thresholds(self) -> list[int]:
        raw = self.cleaned_data["thresholds"]
        try:
            return [int(part) for part in lines(raw)]
        except ValueError:
            raise forms.ValidationError("Whole percentages, e.g. 50, 80, 100.") from None

    def budget_fields(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "limit_usd": data["limit_usd"],
            "mode": data["mode"],
            "thresholds": data["thresholds"],
            "notify_emails": lines(data["notify_emails"]),
        }


class BudgetUpdateForm(BudgetCreateForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, targets=[], **kwargs)
        del self.fields["target"]
        del self.fields["period"]
        del self.fields["tag"]


class CheckoutForm(StyledForm):
    """Buy credit by card: the amount the buyer will pay at the payment provider."""

    amount = forms.DecimalField(
        label="Amount (USD)", min_value=Decimal("5"), max_digits=12, decimal_places=2
    )


class OperatorCreditForm(StyledForm):
    """A platform operator's movement of one organization's balance."""

    KINDS = (
        ("transfer", "Enterprise transfer received"),
        ("refund", "Refund to the customer"),
        ("adjust", "Adjustment (signed)"),
    )
    organization = forms.ModelChoiceField(queryset=Organization.objects.none())
    kind = forms.ChoiceField(choices=KINDS)
    amount = forms.DecimalField(label="Amount (USD)", max_digits=18, decimal_places=6)
    reference = forms.CharField(
        max_length=200, required=False, help_text="The transfer's bank reference (transfers)."
    )
    reason = forms.CharField(
        max_length=500, required=False, help_text="Why (refunds, adjustments)."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["organization"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = Organization.objects.filter(archived_at__isnull=True).order_by("name")


def _policy_form_field(rule: Rule) -> forms.Field:
    """The console input for one field of the policy document (orgs.policy): the document's
    own validation gives every message, so the inputs only carry text to it."""
    common: dict[str, Any] = {"required": False, "label": rule.label, "help_text": rule.help}
    if rule.kind == "strategy":
        choices = [("", "Inherit"), *STRATEGY_LABELS.items()]
        return forms.ChoiceField(choices=choices, **common)
    if rule.kind in ("patterns", "names"):
        # data-picker: console.js adds an input suggesting the catalog's entries (a datalist)
        attrs = {"rows": 2, **({"data-picker": rule.names} if rule.names else {})}
        return forms.CharField(widget=forms.Textarea(attrs=attrs), **common)
    if rule.kind == "flag":
        return forms.BooleanField(**common)
    if rule.choices:
        choices = [("", "Not set"), *((str(k), v) for k, v in rule.choices)]
        return forms.ChoiceField(choices=choices, **common)
    if rule.kind in ("decimal", "integer"):
        attrs = {"inputmode": "decimal" if rule.kind == "decimal" else "numeric"}
        return forms.CharField(widget=forms.TextInput(attrs=attrs), **common)
    attrs = {"list": f"choices-{rule.names}"} if rule.names else {}
    return forms.CharField(max_length=255, widget=forms.TextInput(attrs=attrs), **common)


class RoutingPolicyForm(StyledForm):
    """A routing policy document: one input per field the policy declares (orgs.policy), the
    document validated by ``PolicySpec.from_document`` (its messages, on their inputs)."""

    node = NodeChoiceField(queryset=Node.objects.none(), empty_label=None, label="Applies at")

    def __init__(self, *args: Any, nodes: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes
        for name, rule in RULES.items():
            self.fields[name] = _policy_form_field(rule)
        self.spec: PolicySpec | None = None

    @classmethod
    def initial_for(cls, document: dict[str, Any]) -> dict[str, Any]:
        """The inputs' initial values for a stored document."""
        return {k: "\n".join(v) if isinstance(v, list) else v for k, v in document.items()}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            self.spec = PolicySpec.from_document(self._document(data))
        except PolicyError as exc:
            for name, message in exc.errors.items():
                self.add_error(name if name in self.fields else None, message)
        return data

    def document(self) -> dict[str, Any]:
        assert self.spec is not None, "call is_valid() first"
        return self.spec.to_document()

    @staticmethod
    def _document(data: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for name, rule in RULES.items():
            value = data.get(name)
            if rule.kind in ("patterns", "names"):
                value = lines(value or "")
            elif rule.kind == "integer" and isinstance(value, str):
                value = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
            elif rule.kind == "flag":
                value = True if value else None
            doc[name] = value
        return doc


class RoutePreviewForm(StyledForm):
    node = NodeChoiceField(queryset=Node.objects.none(), empty_label=None, label="Request from")
    model = forms.CharField(
        initial="auto",
        max_length=255,
        help_text="auto, auto:cost / auto:latency / ..., or a model id.",
    )
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=20000,
        help_text="Only used to estimate difficulty for this preview; never stored.",
    )

    def __init__(self, *args: Any, nodes: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes


class OrganizationArchiveForm(StyledForm):
    revoke_keys = forms.BooleanField(
        required=False,
        label="Also revoke every active API key",
        help_text="Archiving refuses while keys are active unless this is ticked.",
    )


class OrganizationMfaForm(StyledForm):
    require_mfa = forms.BooleanField(
        required=False,
        label="Require multi-factor authentication of every member",
        help_text="Members without it are sent to set it up before any page of this "
        "organization. Personal access tokens keep working.",
    )


class MfaCodeForm(StyledForm):
    """A code from the authenticator app (six digits) or a recovery code."""

    code = forms.CharField(
        label="Code",
        max_length=32,
        help_text="The 6-digit code from your authenticator app, or one of your recovery codes.",
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "text", "autofocus": True}
        ),
    )


class MfaConfirmForm(StyledForm):
    code = forms.RegexField(
        label="Code from the app",
        regex=r"^\s*\d{3}\s?\d{3}\s*$",
        max_length=12,
        error_messages={"invalid": "Enter the 6 digits the app shows."},
        help_text="The 6-digit code the app shows for MegaRouter now.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


class MfaDisableForm(StyledForm):
    password = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "off"})
    )
    code = forms.CharField(
        label="Code",
        max_length=32,
        help_text="The 6-digit code from your authenticator app, or one of your recovery codes.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code"}),
    )


class ReportCreateForm(StyledForm):
    """A CSV or PDF report of one subtree over whole local days (``until`` included)."""

    kind = forms.ChoiceField(
        label="Format",
        choices=[("pdf", "PDF spend report"), ("csv", "CSV, one row per request")],
    )
    node = NodeChoiceField(
        label="Covers",
        queryset=Node.objects.none(),
        empty_label=None,
        help_text="The organization or one place in the tree, with everything under it.",
    )
    since = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To (included)", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args: Any, nodes: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        node_field = self.fields["node"]
        assert isinstance(node_field, NodeChoiceField)
        node_field.queryset = nodes

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and until < since:
            self.add_error("until", "The period must end on or after its first day.")
        return data


class ServiceTokenForm(StyledForm):
    name = forms.CharField(max_length=200, help_text="What uses it, e.g. “terraform” or “ci”.")
    node = NodeChoiceField(
        queryset=Node.objects.none(),
        empty_label=None,
        label="Limited to",
        help_text="The token acts on this node and everything below it.",
    )
    scopes = forms.MultipleChoiceField(
        choices=[(scope, f"{scope}: {SCOPE_DESCRIPTIONS[scope]}") for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Only scopes your role on the node covers can be granted.",
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Empty: never.",
    )

    def __init__(self, *args: Any, nodes: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes


class ServiceTokenExpiryForm(StyledForm):
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC. Empty: never.",
    )


# ---------------------------------------------------------------- single sign-on


class SsoEmailForm(StyledForm):
    email = forms.EmailField(label="Work email", max_length=254)


class PasswordLoginForm(AuthenticationForm):
    """Django's login form, refusing a password login where single sign-on is required
    (``identity.selectors.password_login_refusal``)."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        refusal = password_login_refusal(user)
        if refusal:
            raise forms.ValidationError(refusal, code="sso_required")


class IdentityProviderForm(StyledForm):
    name = forms.CharField(max_length=100, help_text="Shown on the login page, e.g. Okta.")
    discovery_url = forms.URLField(
        label="Discovery URL",
        max_length=500,
        assume_scheme="https",
        help_text="The issuer's /.well-known/openid-configuration address.",
    )
    client_id = forms.CharField(label="Client id", max_length=255)
    client_secret = forms.CharField(
        label="Client secret",
        max_length=1000,
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted and never shown again.",
    )
    domains = forms.CharField(
        label="Email domains",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line or comma separated. New accounts and the login page's email "
        "routing use them; see docs/identity.md for how they are trusted.",
    )
    scopes = forms.CharField(max_length=200, initial="openid email profile")
    groups_claim = forms.CharField(label="Groups claim", max_length=100, initial="groups")
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args: Any, secret_required: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not secret_required:
            self.fields["client_secret"].help_text = "Leave empty to keep the stored secret."

    def service_fields(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        data["domains"] = lines(data["domains"])
        return data


class GroupMappingForm(StyledForm):
    group = forms.CharField(
        max_length=255, help_text="The value in the groups claim, or * for every user."
    )
    node = NodeChoiceField(queryset=Node.objects.none(), label="Place")
    role = forms.ChoiceField(
        choices=[(r.value, r.label) for r in Role if r != Role.OWNER],
    )

    def __init__(self, *args: Any, nodes: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["node"].queryset = nodes


class SsoPolicyForm(StyledForm):
    password_login_allowed = forms.BooleanField(
        required=False,
        label="Members may also log in with a password",
        help_text="Off: members of this organization and addresses of its domains must use "
        "single sign-on.",
    )
