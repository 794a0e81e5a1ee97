"""Gets a fresh checkout ready for ``make run``: migrates, loads the demo, prints how to log in.

Idempotent: running it again changes nothing that is already in place. What it prints (console
URL, login, demo key) is also kept, readable by the owner only, in ``<data dir>/credentials.json``:
``make run`` prints it again once everything is up, ``make credentials`` whenever asked
(``python scripts/prepare.py --show``).

Ports follow ``PORT`` (default 8000): the provider simulator listens on ``SIMULATOR_PORT``,
by default ``PORT`` + 1100 (9100 beside 8000), and the demo deployments point at it, so two
checkouts run side by side with different ``PORT`` values.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")


def ports() -> tuple[int, int]:
    """(gateway, simulator): ``PORT`` (8000) and ``SIMULATOR_PORT`` (``PORT`` + 1100)."""
    port = int(os.environ.get("PORT", "8000"))
    return port, int(os.environ.get("SIMULATOR_PORT", str(port + 1100)))


def data_dir() -> Path:
    return Path(os.environ.get("MEGAROUTER_DATA_DIR") or ROOT / "var")


def banner(summary: dict[str, object]) -> str:
    heading = {"running": "MegaRouter is running.", "shown": "MegaRouter (from `make run`):"}
    lines = [
        "",
        heading.get(str(summary.get("state")), "MegaRouter is starting."),
        f"  Console:   {summary['console']}",
        f"  API docs:  {summary['api_docs']}",
        f"  Log in as: {summary['admin_username']} / {summary['admin_password']}",
    ]
    if "api_key" in summary:
        lines.append(f"  Base URL:  {summary.get('base_url')}")
        lines.append(f"  API key:   {summary['api_key']}")
    lines.append(f"  (kept in {data_dir() / 'credentials.json'}; `make credentials` shows them)")
    lines.append("  Stop with Ctrl-C.\n")
    return "\n".join(lines)


def show() -> int:
    """Print the credentials ``make run`` printed (``make credentials``)."""
    path = data_dir() / "credentials.json"
    if not path.exists():
        print(f"No credentials yet ({path}): run `make run` first.", file=sys.stderr)
        return 1
    print(banner({**json.loads(path.read_text()), "state": "shown"}), flush=True)
    return 0


def main() -> int:
    if sys.argv[1:] == ["--show"]:
        return show()
    from megarouter.bootstrap import exit_on_config_error

    return exit_on_config_error(_prepare)


def _prepare() -> int:
    import django
    from django.core.management import call_command, get_commands

    django.setup()
    from django.conf import settings

    call_command("migrate", interactive=False, verbosity=0)
    available = get_commands()
    port, sim_port = ports()
    os.environ.setdefault("SIMULATOR_URL", f"http://127.0.0.1:{sim_port}")
    base = f"http://127.0.0.1:{port}"
    summary: dict[str, object] = {"console": f"{base}/", "api_docs": f"{base}/api/docs/"}

    if "catalog_import" in available:
        call_command("catalog_import", verbosity=0)
    if "apply_config" in available:
        # Demo deployments on the provider simulator (SIMULATOR_URL); idempotent.
        call_command("apply_config", str(ROOT / "config" / "demo.toml"), stdout=io.StringIO())
    if "seed_demo" in available:
        out = io.StringIO()
        call_command("seed_demo", json=True, stdout=out)
        demo = json.loads(out.getvalue())
        summary.update(demo)
        if "billing_seed_demo" in available:  # prepaid credit + a budget for the demo tenant
            call_command("billing_seed_demo", stdout=io.StringIO())
    else:
        summary.update(_ensure_admin(Path(settings.DATA_DIR)))

    summary.setdefault("base_url", base + "/v1")
    path = data_dir() / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(banner(summary), flush=True)
    return 0


def _ensure_admin(data_dir: Path) -> dict[str, str]:
    from django.contrib.auth import get_user_model

    username = os.environ.get("MEGAROUTER_ADMIN_USERNAME", "admin")
    password_file = data_dir / "admin-password"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = os.environ.get("MEGAROUTER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(
        username=username, defaults={"is_staff": True, "is_superuser": True}
    )
    if not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
    return {"admin_username": username, "admin_password": password}


if __name__ == "__main__":
    sys.exit(main())
