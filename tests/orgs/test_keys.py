from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.utils import timezone

from orgs import services
from orgs.keys import (
    KeyContext,
    KeyRejected,
    KeyResolver,
    default_resolver,
    invalidate_prefixes,
    ip_allowed,
    key_context_for,
    key_context_for_sync,
    model_allowed,
)
from orgs.models import ApiKey, ApiKeySecret, Organization, Role
from orgs.secrets import digest_of
from tests.orgs.factories import SYSTEM, add_member, make_key, make_tree


@pytest.fixture
def tree(db):
    return make_tree()


def _reason(raw, resolver=None):
    with pytest.raises(KeyRejected) as exc:
        (resolver or default_resolver).resolve_sync(raw)
    return exc.value.reason


def test_key_is_shown_once_and_stored_as_prefix_and_hmac(tree):
    created = make_key(tree.project, tree.owner_membership)
    raw = created.raw_key
    assert raw.startswith("mrk_") and len(raw) == 16 + 1 + 43
    secret = ApiKeySecret.objects.get(api_key=created.api_key)
    assert secret.prefix == raw[:16] == created.api_key.prefix
    assert secret.digest == digest_of(raw) and raw not in secret.digest
    # the raw key is in no column of any row
    assert not ApiKey.objects.filter(name__contains=raw[17:]).exists()


def test_context_has_exact_ids_and_settings(tree):
    dev = add_member(tree.team, Role.DEVELOPER)
    tree.org.time_zone = "Europe/Paris"
    tree.org.save()
    expires = timezone.now() + dt.timedelta(days=3)
    created = make_key(
        tree.project,
        dev,
        allowed_models=["openai/*", "anthropic/claude-3-5-haiku"],
        ip_allowlist=["10.0.0.0/8", "2001:db8::/32"],
        rpm_limit=60,
        tpm_limit=100_000,
        routing_policy={"strategy": "cost", "blocked_models": ["*/preview-*"]},
        expires_at=expires,
    )
    ctx = key_context_for_sync(created.raw_key)
    assert ctx == KeyContext(
        key_id=created.api_key.pk,
        key_prefix=created.raw_key[:16],
        organization_id=tree.org.pk,
        department_id=tree.dept.pk,
        team_id=tree.team.pk,
        project_id=tree.project.pk,
        member_id=dev.pk,
        user_id=dev.user_id,
        allowed_models=("openai/*", "anthropic/claude-3-5-haiku"),
        ip_allowlist=("10.0.0.0/8", "2001:db8::/32"),
        rpm_limit=60,
        tpm_limit=100_000,
        routing_policy={"strategy": "cost", "blocked_models": ["*/preview-*"]},
        expires_at=expires,
        time_zone="Europe/Paris",
    )


@pytest.fixture
def committed_key(transactional_db):
    tree = make_tree("async")
    return make_key(tree.project, tree.owner_membership)


async def test_async_lookup_matches_sync(committed_key):
    try:
        await _async_lookups(committed_key)
    finally:
        # the ORM ran in asgiref's worker thread: close its connection there
        await sync_to_async(connections.close_all)()


async def _async_lookups(committed_key):
    ctx = await key_context_for(committed_key.raw_key)
    assert ctx.key_id == committed_key.api_key.pk
    assert ctx.project_id == committed_key.api_key.project_id
    # the second call is served from the in-process cache
    assert await key_context_for(committed_key.raw_key) is ctx
    with pytest.raises(KeyRejected) as exc:
        await key_context_for(None)
    assert exc.value.reason == "missing"
    # 50 concurrent requests with a cold key: one lookup
    cold = KeyResolver()
    contexts = await asyncio.gather(*(cold.resolve(committed_key.raw_key) for _ in range(50)))
    assert cold.db_loads + cold.shared_hits == 1 and {c.key_id for c in contexts} == {
        committed_key.api_key.pk
    }
    with pytest.raises(KeyRejected) as exc:
        last = committed_key.raw_key[-1]
        await key_context_for(committed_key.raw_key[:-1] + ("x" if last != "x" else "y"))
    assert exc.value.reason == "invalid"


def test_cold_lookup_is_one_query_and_warm_lookup_none(tree, django_assert_num_queries):
    raw = make_key(tree.project, tree.owner_membership).raw_key
    resolver = KeyResolver()
    with django_assert_num_queries(1):
        resolver.resolve_sync(raw)
    with django_assert_num_queries(0):
        for _ in range(100):
            resolver.resolve_sync(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "missing"),
        (None, "missing"),
        ("sk-abc", "invalid"),
        ("mrk_short", "invalid"),
        ("mrk_UPPERCASEXXX_" + "a" * 43, "invalid"),
        ("mrk_aaaaaaaaaaaa_" + "a" * 43, "invalid"),  # well-formed, unknown prefix
    ],
)
def test_malformed_and_unknown_keys(tree, raw, reason):
    assert _reason(raw) == reason


def test_right_prefix_wrong_secret_is_invalid(tree):
    raw = make_key(tree.project, tree.owner_membership).raw_key
    forged = raw[:17] + ("A" if raw[17] != "A" else "B") + raw[18:]
    assert _reason(forged) == "invalid"
    assert key_context_for_sync(raw).project_id == tree.project.pk


def test_revoked_expired_and_inactive(tree, django_capture_on_commit_callbacks):
    dev = add_member(tree.team, Role.DEVELOPER)
    revoked = make_key(tree.project, dev, name="r")
    expired = make_key(tree.project, dev, name="e")
    member_left = make_key(tree.project, dev, name="m")
    other_project = services.node_create(actor=SYSTEM, parent=tree.team, name="P2", slug="p2")
    archived = make_key(other_project, tree.owner_membership, name="a")
    for raw in (revoked.raw_key, expired.raw_key, member_left.raw_key, archived.raw_key):
        key_context_for_sync(raw)  # all warm in this process's cache
    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(actor=SYSTEM, api_key=revoked.api_key)
    assert _reason(revoked.raw_key) == "revoked"
    ApiKey.objects.filter(pk=expired.api_key.pk).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    invalidate_prefixes([expired.raw_key[:16]])  # what a service does after commit
    assert _reason(expired.raw_key) == "expired"
    with django_capture_on_commit_callbacks(execute=True):
        services.node_archive(actor=SYSTEM, node=other_project, revoke_keys=True)
    assert _reason(archived.raw_key) == "revoked"
    with django_capture_on_commit_callbacks(execute=True):
        services.membership_remove(actor=SYSTEM, membership=dev)
    assert _reason(member_left.raw_key) == "inactive"


def test_archived_org_makes_keys_inactive(tree):
    raw = make_key(tree.project, tree.owner_membership).raw_key
    Organization.objects.filter(pk=tree.org.pk).update(archived_at=timezone.now())
    invalidate_prefixes([raw[:16]])
    assert _reason(raw) == "inactive"


def test_expiry_needs_no_cache_invalidation(tree):
    raw = make_key(
        tree.project,
        tree.owner_membership,
        expires_at=timezone.now() + dt.timedelta(milliseconds=300),
    ).raw_key
    resolver = KeyResolver(local_ttl=60)  # a long-lived cache entry
    resolver.resolve_sync(raw)
    time.sleep(0.35)
    assert _reason(raw, resolver) == "expired"


def test_rotation_with_grace_keeps_old_secret_until_it_ends(
    tree, django_capture_on_commit_callbacks
):
    created = make_key(tree.project, tree.owner_membership)
    old = created.raw_key
    with django_capture_on_commit_callbacks(execute=True):
        rotated = services.api_key_rotate(
            actor=SYSTEM, api_key=created.api_key, grace=dt.timedelta(hours=1)
        )
    assert rotated.api_key.pk == created.api_key.pk
    assert rotated.raw_key != old
    assert key_context_for_sync(old).key_id == created.api_key.pk
    assert key_context_for_sync(rotated.raw_key).key_prefix == rotated.raw_key[:16]
    # end the grace period: the old secret stops, the new one keeps working
    ApiKeySecret.objects.filter(prefix=old[:16]).update(
        valid_until=timezone.now() - dt.timedelta(seconds=1)
    )
    invalidate_prefixes([old[:16]])
    assert _reason(old) == "expired"
    assert key_context_for_sync(rotated.raw_key).key_id == created.api_key.pk


def test_rotation_without_grace_ends_old_secret_now(tree, django_capture_on_commit_callbacks):
    created = make_key(tree.project, tree.owner_membership)
    key_context_for_sync(created.raw_key)
    with django_capture_on_commit_callbacks(execute=True):
        rotated = services.api_key_rotate(actor=SYSTEM, api_key=created.api_key)
    assert _reason(created.raw_key) == "expired"
    assert key_context_for_sync(rotated.raw_key).key_id == created.api_key.pk


def test_revocation_reaches_another_resolver_within_a_second(
    tree, django_capture_on_commit_callbacks
):
    """A resolver that this process's invalidation never touches stands for another process
    (it shares only the database and, in services mode, Redis)."""
    raw = make_key(tree.project, tree.owner_membership).raw_key
    other = KeyResolver()
    assert other.resolve_sync(raw).project_id == tree.project.pk
    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(actor=SYSTEM, api_key=ApiKey.objects.get())
    revoked_at = time.monotonic()
    while True:
        try:
            other.resolve_sync(raw)
        except KeyRejected as exc:
            assert exc.reason == "revoked"
            break
        assert time.monotonic() - revoked_at < 1.0, "still accepted after 1 s"
        time.sleep(0.02)
    assert time.monotonic() - revoked_at < 1.0


@pytest.mark.django_db(transaction=True)
def test_revocation_committed_in_one_thread_is_refused_in_another_within_a_second():
    tree = make_tree("threads")
    raw = make_key(tree.project, tree.owner_membership).raw_key
    other = KeyResolver()  # the other thread's process-local cache
    accepted_before = threading.Event()
    result: dict[str, float | str] = {}
    stop = threading.Event()

    def worker():
        try:
            while not stop.is_set():
                try:
                    other.resolve_sync(raw)
                    accepted_before.set()
                except KeyRejected as exc:
                    result["refused_at"] = time.monotonic()
                    result["reason"] = exc.reason
                    return
                time.sleep(0.01)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    assert accepted_before.wait(5)
    services.api_key_revoke(actor=SYSTEM, api_key=ApiKey.objects.get())  # commits here
    committed_at = time.monotonic()
    thread.join(3)
    stop.set()
    thread.join()
    assert result["reason"] == "revoked"
    assert float(result["refused_at"]) - committed_at < 1.0


def test_ip_allowed():
    ctx = _ctx(ip_allowlist=("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"))
    assert ip_allowed(ctx, "10.1.2.3") is True
    assert ip_allowed(ctx, "192.168.1.7") is True
    assert ip_allowed(ctx, "192.168.1.8") is False
    assert ip_allowed(ctx, "2001:db8::1") is True
    assert ip_allowed(ctx, "::ffff:10.0.0.1") is True
    assert ip_allowed(ctx, "11.0.0.1") is False
    assert ip_allowed(ctx, "not-an-ip") is False
    assert ip_allowed(ctx, None) is False
    assert ip_allowed(_ctx(ip_allowlist=()), "8.8.8.8") is True


def test_model_allowed():
    ctx = _ctx(allowed_models=("openai/*", "anthropic/claude-3-5-haiku"))
    assert model_allowed(ctx, "openai/gpt-4o") is True
    assert model_allowed(ctx, "anthropic/claude-3-5-haiku") is True
    assert model_allowed(ctx, "anthropic/claude-3-opus") is False
    assert model_allowed(ctx, "OPENAI/gpt-4o") is False
    assert model_allowed(_ctx(allowed_models=()), "anything/at-all") is True


def _ctx(**overrides):
    base = dict(
        key_id=1,
        key_prefix="mrk_aaaaaaaaaaaa",
        organization_id=1,
        department_id=2,
        team_id=3,
        project_id=4,
        member_id=5,
        user_id=6,
        allowed_models=(),
        ip_allowlist=(),
        rpm_limit=None,
        tpm_limit=None,
        routing_policy=None,
        expires_at=None,
        time_zone="UTC",
    )
    base.update(overrides)
    return KeyContext(**base)


def test_deactivated_user_keys_are_refused(tree, django_capture_on_commit_callbacks):
    dev = add_member(tree.team, Role.DEVELOPER)
    raw = make_key(tree.project, dev).raw_key
    key_context_for_sync(raw)
    user = dev.user
    user.is_active = False
    with django_capture_on_commit_callbacks(execute=True):
        user.save()  # e.g. from the Django admin, not through an orgs service
    assert _reason(raw) == "inactive"


def test_raw_key_from_headers():
    from django.http import HttpRequest

    from orgs.keys import raw_key_from_headers

    def headers(**meta):
        request = HttpRequest()
        request.META.update(meta)
        return request.headers

    assert raw_key_from_headers(headers(HTTP_AUTHORIZATION="Bearer mrk_x")) == "mrk_x"
    assert raw_key_from_headers(headers(HTTP_AUTHORIZATION="bearer  mrk_y ")) == "mrk_y"
    assert raw_key_from_headers(headers(HTTP_X_API_KEY="mrk_z")) == "mrk_z"
    assert raw_key_from_headers(headers(HTTP_AUTHORIZATION="Basic abc")) is None
    assert raw_key_from_headers(headers()) is None


DEAD_REDIS_CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "dead": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    },
}


def test_unreachable_shared_cache_falls_back_to_the_database(
    tree, settings, django_assert_num_queries
):
    """Redis down must not take key auth down: the database answers, revocation still holds."""
    settings.CACHES = DEAD_REDIS_CACHES
    created = make_key(tree.project, tree.owner_membership)
    resolver = KeyResolver(local_ttl=0, cache_alias="dead")
    with django_assert_num_queries(1):
        ctx = resolver.resolve_sync(created.raw_key)
    assert ctx.key_id == created.api_key.pk
    assert resolver.db_loads == 1 and resolver.shared_hits == 0
    services.api_key_revoke(api_key=created.api_key, actor=SYSTEM)
    resolver.invalidate([created.api_key.prefix])  # logs, does not raise
    assert _reason(created.raw_key, resolver) == "revoked"


async def test_unreachable_shared_cache_falls_back_to_the_database_async(committed_key, settings):
    settings.CACHES = DEAD_REDIS_CACHES
    resolver = KeyResolver(local_ttl=0, cache_alias="dead")
    try:
        ctx = await resolver.resolve(committed_key.raw_key)
    finally:
        await sync_to_async(connections.close_all)()
    assert ctx.key_id == committed_key.api_key.pk
    assert resolver.db_loads == 1
