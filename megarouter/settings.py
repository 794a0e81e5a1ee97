"""MegaRouter settings, read from the environment (see docs/configuration.md).

The defaults are the embedded mode: SQLite, an in-process cache, and Celery on a filesystem
broker, so a machine with nothing but Python runs the whole product. Production mode is
``MEGAROUTER_ENV=production`` with ``DATABASE_URL`` (PostgreSQL), ``REDIS_URL`` and a real
``SECRET_KEY``.
"""

from __future__ import annotations

from pathlib import Path

from celery.schedules import crontab

from megarouter.env import ConfigError, Env

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env.path("MEGAROUTER_DATA_DIR", BASE_DIR / "var")
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEV_SECRET_KEY = "dev-insecure-megarouter-secret-key-change-me"  # noqa: S105

MEGAROUTER_ENV = env.choice("MEGAROUTER_ENV", "development", ("development", "production", "test"))
PRODUCTION = MEGAROUTER_ENV == "production"

SECRET_KEY = env.str("SECRET_KEY", DEV_SECRET_KEY)
# Keys the HMAC digests of API keys and access tokens (orgs.secrets); changing it voids them all.
KEY_HMAC_SECRET = env.str("MEGAROUTER_KEY_HMAC_SECRET", SECRET_KEY)
DEBUG = env.bool("DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["*"] if not PRODUCTION else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])

DATABASES = {"default": env.database("DATABASE_URL", DATA_DIR / "megarouter.sqlite3")}
REDIS_URL = env.redis_url("REDIS_URL")

if PRODUCTION:
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 32:
        raise ConfigError(
            "SECRET_KEY", "production needs a random secret of at least 32 characters"
        )
    if DEBUG:
        raise ConfigError("DEBUG", "must be off in production")
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ConfigError("DATABASE_URL", "production needs PostgreSQL (postgres://...)")
    if REDIS_URL is None:
        raise ConfigError("REDIS_URL", "production needs Redis (redis://host:6379/0)")
    if not ALLOWED_HOSTS:
        raise ConfigError("ALLOWED_HOSTS", "production needs the host names the gateway serves")

# Provider credentials are encrypted at rest with these Fernet keys (comma-separated; the first
# encrypts, all decrypt, so a new key goes first and `manage.py credentials_rotate` re-encrypts).
# Outside production an unset value derives one key from SECRET_KEY (see megarouter/crypto.py).
MEGAROUTER_ENCRYPTION_KEYS = env.list("MEGAROUTER_ENCRYPTION_KEYS", [])
if PRODUCTION and not MEGAROUTER_ENCRYPTION_KEYS:
    raise ConfigError(
        "MEGAROUTER_ENCRYPTION_KEYS",
        "production needs at least one Fernet key (python -c 'from cryptography.fernet "
        "import Fernet; print(Fernet.generate_key().decode())')",
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "guardian",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "orgs",
    "identity",
    "routing",
    "billing",
    "gateway",
    "console",
]

MIDDLEWARE = [
    "megarouter.middleware.RequestLogMiddleware",
    "megarouter.middleware.ApiJsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified(): the session passed the MFA step (docs/identity.md)
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "megarouter.urls"
WSGI_APPLICATION = "megarouter.wsgi.application"
ASGI_APPLICATION = "megarouter.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# Multi-factor authentication (docs/identity.md): the name authenticator apps show beside the
# account; django-otp's own back-off after wrong codes stays on (1 s, 2 s, 4 s...).
OTP_TOTP_ISSUER = env.str("MEGAROUTER_MFA_ISSUER", "MegaRouter")
# Failed console logins (password or MFA code) allowed per account and per client address in a
# window (docs/identity.md, "Login rate limits"); counted in the Django cache (Redis in
# production, so every process shares them). 0 turns a limit off.
MEGAROUTER_LOGIN_FAILURES_PER_ACCOUNT = env.int(
    "MEGAROUTER_LOGIN_FAILURES_PER_ACCOUNT", 10, min_value=0
)
MEGAROUTER_LOGIN_FAILURES_PER_IP = env.int("MEGAROUTER_LOGIN_FAILURES_PER_IP", 10, min_value=0)
MEGAROUTER_LOGIN_FAILURE_WINDOW_S = env.int("MEGAROUTER_LOGIN_FAILURE_WINDOW_S", 900, min_value=1)
MEGAROUTER_LOGIN_FAILURE_PREFIX = "login-fail"  # the counters' cache keys (tests use their own)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Failed gateway key attempts allowed per client address per minute (0 turns the limit off).
MEGAROUTER_AUTH_FAILURES_PER_MINUTE = env.int(
    "MEGAROUTER_AUTH_FAILURES_PER_MINUTE", 30, min_value=0
)

# Caches: Redis when configured (shared by every process), otherwise in-process memory.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "mr",
            # Bounded waits: a dead or hung Redis fails fast so callers can fall back.
            "OPTIONS": {
                "socket_connect_timeout": env.float("REDIS_CONNECT_TIMEOUT", 0.5, min_value=0.01),
                "socket_timeout": env.float("REDIS_SOCKET_TIMEOUT", 1.0, min_value=0.01),
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "megarouter",
        }
    }

# Celery: Redis as broker in production; a filesystem broker in the embedded mode, so the
# worker and beat run as ordinary processes with no broker server installed.
CELERY_BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", REDIS_URL)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 3600}
else:
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", "filesystem://")
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),  # kombu's default: ./control
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"
CELERY_IMPORTS = ("megarouter.tasks",)
# Periodic tasks run by `celery beat` (started by `make run`); apps add their own entries.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "clear-expired-sessions": {"task": "megarouter.clear_expired_sessions", "schedule": 3600.0},
}

# Routing engine: live health, circuit breakers and failover (docs/failover.md).
ROUTING_HEALTH_ALPHA = env.float("ROUTING_HEALTH_ALPHA", 0.2, min_value=0.01, max_value=1.0)
ROUTING_HEALTH_REFRESH_S = env.float("ROUTING_HEALTH_REFRESH_S", 0.25, min_value=0.0)
ROUTING_BREAKER_FAILURES = env.int("ROUTING_BREAKER_FAILURES", 5, min_value=1)
ROUTING_BREAKER_ERROR_RATE = env.float(
    "ROUTING_BREAKER_ERROR_RATE", 0.5, min_value=0.01, max_value=1.0
)
ROUTING_BREAKER_MIN_REQUESTS = env.int("ROUTING_BREAKER_MIN_REQUESTS", 20, min_value=1)
ROUTING_BREAKER_WINDOW_S = env.float("ROUTING_BREAKER_WINDOW_S", 30.0, min_value=1.0)
ROUTING_BREAKER_COOLDOWN_S = env.float("ROUTING_BREAKER_COOLDOWN_S", 10.0, min_value=0.0)
ROUTING_BREAKER_TRIAL_TIMEOUT_S = env.float("ROUTING_BREAKER_TRIAL_TIMEOUT_S", 30.0, min_value=1.0)
ROUTING_FAILOVER_MAX_ATTEMPTS = env.int("ROUTING_FAILOVER_MAX_ATTEMPTS", 4, min_value=1)
ROUTING_FAILOVER_MAX_SECONDS = env.float("ROUTING_FAILOVER_MAX_SECONDS", 300.0, min_value=0.1)
ROUTING_FAILOVER_MAX_RETRY_WAIT_S = env.float(
    "ROUTING_FAILOVER_MAX_RETRY_WAIT_S", 1.0, min_value=0.0
)
ROUTING_RETRIES = env.int("ROUTING_RETRIES", 2, min_value=0)
ROUTING_RETRY_BACKOFF_S = env.float("ROUTING_RETRY_BACKOFF_S", 0.1, min_value=0.0)
ROUTING_RETRY_AFTER_MAX_S = env.float("ROUTING_RETRY_AFTER_MAX_S", 2.0, min_value=0.0)
ROUTING_TTFT_TIMEOUT_S = env.float("ROUTING_TTFT_TIMEOUT_S", 20.0, min_value=0.1)
ROUTING_STALL_TIMEOUT_S = env.float("ROUTING_STALL_TIMEOUT_S", 30.0, min_value=0.1)
ROUTING_ATTEMPT_TIMEOUT_S = env.float("ROUTING_ATTEMPT_TIMEOUT_S", 120.0, min_value=0.1)
ROUTING_PROBE_INTERVAL_S = env.float("ROUTING_PROBE_INTERVAL_S", 60.0, min_value=5.0)
# Without Redis, health lives in each process's memory: the gateway process then probes its
# own deployments (the state it routes on is the state its console shows) and the Celery task
# stands down. With Redis, Celery probes into the shared store.
ROUTING_PROBES_IN_PROCESS = env.bool("ROUTING_PROBES_IN_PROCESS", not REDIS_URL)
CELERY_BEAT_SCHEDULE["probe-deployments"] = {
    "task": "gateway.probe_deployments",
    "schedule": ROUTING_PROBE_INTERVAL_S,
}

# Billing (docs/billing.md). Admission runs on Redis when REDIS_URL is set, else the database.
BILLING_ADMISSION_BACKEND = env.choice(
    "BILLING_ADMISSION_BACKEND", "redis" if REDIS_URL else "db", ("db", "redis")
)
if BILLING_ADMISSION_BACKEND == "redis" and not REDIS_URL:
    raise ConfigError("BILLING_ADMISSION_BACKEND", "redis needs REDIS_URL")
# OpenTelemetry traces of /v1/ requests (megarouter/tracing.py): "otlp" exports over OTLP/HTTP
# (the OTEL_EXPORTER_OTLP_* variables), "console" prints spans, "off"; unset: on when an
# OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT is set.
MEGAROUTER_TRACING = env.choice("MEGAROUTER_TRACING", "", ("", "otlp", "console", "off"))
# megarouter/refresh.py: background cache refreshes on their own threads (False: on Django's
# sync thread, which the test suite needs; not an operator setting).
MEGAROUTER_REFRESH_POOL = True
# The longest a request waits for the catalog's / policies' periodic re-check (a cache read,
# and a rebuild when the configuration changed) before it is served the value it had.
MEGAROUTER_REFRESH_WAIT_S = env.float(
    "MEGAROUTER_REFRESH_WAIT_S", 1.0, min_value=0.0, max_value=30.0
)
# How the Redis backend's database rows are written: "behind" (batched by a writer thread, off
# the request path; the usage stream in Redis covers the gap) or "inline" (each request
# commits its own rows before it answers). billing/admission/writer.py.
BILLING_USAGE_WRITE = env.choice("BILLING_USAGE_WRITE", "behind", ("behind", "inline"))
# "behind": how long a batch waits for more requests after its first before it commits
# (fewer, larger transactions under load; 0 commits whatever queued during the last commit).
BILLING_USAGE_LINGER_S = env.float("BILLING_USAGE_LINGER_S", 0.05, min_value=0.0, max_value=5.0)
# Seconds a reservation may stay open before reconciliation releases it (crashed process).
BILLING_RESERVATION_TTL = env.int("BILLING_RESERVATION_TTL", 900, min_value=30)
# Gateway processes beat every 5 s; reconciliation closes the holds of a process silent for
# 15 s (billing.admission.heartbeat). Off: holds are closed by their deadline only.
BILLING_HEARTBEATS = env.bool("BILLING_HEARTBEATS", True)
# Failed-request counts (billing/failures.py): seconds between a gateway process's writes of
# what it counted in memory; 0 writes each count before the request answers (the test suite).
BILLING_FAILURES_FLUSH_SECONDS = env.float(
    "BILLING_FAILURES_FLUSH_SECONDS", 5.0, min_value=0.0, max_value=300.0
)
# Payment provider webhooks (Stripe-style signatures); unset: the receiver refuses everything.
BILLING_PAYMENT_WEBHOOK_SECRET = env.str("BILLING_PAYMENT_WEBHOOK_SECRET", "")
BILLING_PAYMENT_WEBHOOK_TOLERANCE = env.int("BILLING_PAYMENT_WEBHOOK_TOLERANCE", 300, min_value=1)
# The payment provider's page for a checkout: {id}, {amount}, {cents}, {organization} filled in
# (e.g. a hosted payment link that sends checkout.session.completed with client_reference_id).
BILLING_CHECKOUT_URL = env.str("BILLING_CHECKOUT_URL", "")
# Key prefix of the Redis admission counters (tests use their own).
BILLING_REDIS_PREFIX = env.str("BILLING_REDIS_PREFIX", "mr:b")
# Signs the budget alert webhooks we send (header X-MegaRouter-Signature).
BILLING_ALERT_WEBHOOK_SECRET = env.str("BILLING_ALERT_WEBHOOK_SECRET", SECRET_KEY)
CELERY_BEAT_SCHEDULE.update(
    {
        "billing-usage-events": {"task": "billing.usage_events_process", "schedule": 5.0},
        "billing-reconcile": {"task": "billing.reservations_reconcile", "schedule": 15.0},
        "billing-alerts": {"task": "billing.budget_alerts_check", "schedule": 60.0},
        "billing-periods": {"task": "billing.budget_periods_roll", "schedule": 300.0},
    }
)

# A conversation routed with auto stays on the deployment holding its prompt cache while that
# is cheaper than switching (docs/routing.md, "Conversations and prompt caches").
MEGAROUTER_CACHE_AWARE_ROUTING = env.bool("MEGAROUTER_CACHE_AWARE_ROUTING", True)

# Analytics and reports (docs/analytics.md).
# Savings are measured against this catalog model (a per-policy reference comes with routing).
MEGAROUTER_DEFAULT_REFERENCE_MODEL = env.str("MEGAROUTER_DEFAULT_REFERENCE_MODEL", "openai/gpt-4o")
# Seconds a usage record waits before the rollup takes it (late commits stay in order).
ANALYTICS_ROLLUP_LAG = env.int("ANALYTICS_ROLLUP_LAG", 10, min_value=0)
REPORTS_DIR = DATA_DIR / "reports"
# Where people reach the console: the base of links in emails (report downloads).
MEGAROUTER_PUBLIC_URL = env.str("MEGAROUTER_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Seconds a signed report download link stays valid.
REPORT_LINK_MAX_AGE = env.int("REPORT_LINK_MAX_AGE", 3600, min_value=60)
# CSV / PDF reports are deleted this many days after they were built (statements are kept).
REPORT_RETENTION_DAYS = env.int("REPORT_RETENTION_DAYS", 30, min_value=1)
# Seconds after which a report still "running" is taken for a lost worker and marked failed.
REPORT_STUCK_AFTER = env.int("REPORT_STUCK_AFTER", 3600, min_value=60)
CELERY_BEAT_SCHEDULE.update(
    {
        "billing-analytics-rollup": {"task": "billing.analytics_rollup", "schedule": 10.0},
        "billing-reports-housekeeping": {
            "task": "billing.reports_housekeeping",
            "schedule": 3600.0,
        },
        "billing-monthly-statements": {
            "task": "billing.statements_monthly",
            "schedule": crontab(minute=30, day_of_month="1,2"),
        },
    }
)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MegaRouter management API",
    "DESCRIPTION": "Organizations, members, API keys, budgets, routing policies and reports.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "megarouter.schema.add_error_responses",
    ],
}

# Outbound calls to LLM providers (gateway/http.py, docs/providers.md). Seconds.
PROVIDER_HTTP_TRANSPORT = env.choice("PROVIDER_HTTP_TRANSPORT", "aiohttp", ("aiohttp", "httpx"))
PROVIDER_CONNECT_TIMEOUT = env.float("PROVIDER_CONNECT_TIMEOUT", 5.0)
PROVIDER_MAX_CONNECTIONS = env.int("PROVIDER_MAX_CONNECTIONS", 512, min_value=1)
PROVIDER_MAX_KEEPALIVE = env.int("PROVIDER_MAX_KEEPALIVE", 128, min_value=0)
PROVIDER_KEEPALIVE_EXPIRY = env.float("PROVIDER_KEEPALIVE_EXPIRY", 30.0, min_value=0.0)

# Email: the console in the embedded mode, SMTP when EMAIL_HOST is set.
EMAIL_HOST = env.optional_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env.int("EMAIL_PORT", 587, min_value=1, max_value=65535)
    EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", "MegaRouter <noreply@megarouter.local>")

if PRODUCTION:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Logging: JSON lines on stderr. Request and response bodies are never logged.
LOG_LEVEL = env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "megarouter.logging.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        # The request line comes from megarouter.request; Django's own copy would repeat it.
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "WARNING"},
        # httpx logs every outbound request URL at INFO: noise on the hot path.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

# Gateway (/v1/): request body limit and the /metrics scrape token (docs/api.md).
MEGAROUTER_MAX_BODY_BYTES = env.int(
    "MEGAROUTER_MAX_BODY_BYTES", 20 * 1024 * 1024, min_value=1024, max_value=1024**3
)
MEGAROUTER_METRICS_TOKEN = env.optional_str("MEGAROUTER_METRICS_TOKEN")
# A request that sets no max_tokens may produce its model's maximum output, lowered to what the
# tightest budget or the balance pays for; the gateway sends that limit upstream, so the hold
# is the ceiling of the charge (docs/billing.md). The operator may cap it (0: no cap).
MEGAROUTER_MAX_OUTPUT_TOKENS = env.int(
    "MEGAROUTER_MAX_OUTPUT_TOKENS", 0, min_value=0, max_value=10_000_000
)
# Fewer output tokens than this (per choice) left to pay for: the request is refused.
MEGAROUTER_MIN_OUTPUT_TOKENS = env.int("MEGAROUTER_MIN_OUTPUT_TOKENS", 64, min_value=1)
