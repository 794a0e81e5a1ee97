"""The embedded mode runs Celery with no broker server: a task sent by one process is picked up
by a worker in another, through the filesystem broker."""

import os
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def test_filesystem_broker_delivers_a_task_to_a_separate_worker(tmp_path):
    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        import pytest

        pytest.skip("this run uses a broker server (REDIS_URL is set)")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["MEGAROUTER_DATA_DIR"] = str(tmp_path)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120
    )
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "megarouter",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        sender = "from megarouter.celery import app; print(app.send_task('megarouter.clear_expired_sessions').id)"
        task_id = subprocess.run(
            [sys.executable, "-c", sender],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if f"Task megarouter.clear_expired_sessions[{task_id}] succeeded" in log.read_text():
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"worker never ran the task; log:\n{log.read_text()}")
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert not list((tmp_path / "broker" / "queue").glob("*.msg"))


def test_beat_schedule_names_registered_tasks():
    from megarouter.celery import app

    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks
