"""A user's console sessions (docs/identity.md, "Sessions"): each login records a
``LoginSession`` beside the session store's own row; the sessions page lists those still alive
and signs out the others.

Works with any Django session backend (the database one is in use, ``SESSION_ENGINE`` unset):
"alive" asks the store itself whether the key still loads a session of this user (expired,
flushed or deleted sessions do not), and ending one deletes it from the store, so its cookie
opens nothing at the next request in any process.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.db import transaction
from django.utils import timezone

from orgs.models import LoginSession

LISTED = 50  # the most recent live rows a page shows


def _store(session_key: str) -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)


def _alive(row: LoginSession) -> bool:
    return str(_store(row.session_key).get(SESSION_KEY)) == str(row.user_id)


def login_session_record(
    *, user: Any, session_key: str, ip: str | None, user_agent: str, mfa: bool
) -> LoginSession:
    """Record the session a login just started (or, when it passes MFA later, mark it)."""
    row, _ = LoginSession.objects.update_or_create(
        session_key=session_key,
        defaults={"user": user, "ip": ip, "user_agent": user_agent[:200], "mfa": mfa},
    )
    return row


def login_sessions_alive(*, user: Any) -> list[LoginSession]:
    """The user's sessions that the store still holds, newest first."""
    rows = LoginSession.objects.filter(user_id=user.pk, ended_at__isnull=True)[:LISTED]
    return [row for row in rows if _alive(row)]


def login_session_ended(*, session_key: str | None) -> None:
    """A session ended by logging out."""
    if session_key:
        LoginSession.objects.filter(session_key=session_key, ended_at__isnull=True).update(
            ended_at=timezone.now()
        )


@transaction.atomic
def login_sessions_end_others(*, user: Any, current_key: str | None) -> int:
    """Sign out every other session of the user: delete each from the session store and mark
    its row ended. Returns how many were still alive."""
    rows = list(
        LoginSession.objects.select_for_update()
        .filter(user_id=user.pk, ended_at__isnull=True)
        .exclude(session_key=current_key or "")
    )
    alive = 0
    for row in rows:
        if _alive(row):
            alive += 1
            _store(row.session_key).delete()
    LoginSession.objects.filter(pk__in=[row.pk for row in rows]).update(ended_at=timezone.now())
    return alive
