"""`make run`'s scripts: ports follow PORT, the banner comes back, the demo simulator takes
the catalog's context windows."""

from __future__ import annotations

import json

from scripts import prepare, run_stack


def test_ports_follow_port(monkeypatch):
    monkeypatch.delenv("SIMULATOR_PORT", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert prepare.ports() == (8000, 9100)
    monkeypatch.setenv("PORT", "8123")
    assert prepare.ports() == (8123, 9223)  # a second checkout does not collide
    monkeypatch.setenv("SIMULATOR_PORT", "9999")
    assert prepare.ports() == (8123, 9999)
    simulator = run_stack.commands(8123, 1, 9999)["simulator"]
    assert simulator[simulator.index("--port") + 1] == "9999"


def test_the_demo_simulator_window_holds_every_catalog_model(monkeypatch):
    """The demo deploys every catalog model on the simulator: with its own 128k default, a
    model with a larger window got a limit the simulator refused ("hi there!" under auto)."""
    from pathlib import Path

    catalog = json.loads(
        (Path(prepare.ROOT) / "routing/data/model_prices_and_context_window.json").read_text()
    )
    windows = [
        e.get("max_input_tokens", 0) + e.get("max_output_tokens", 0)
        for name, e in catalog.items()
        if name != "sample_spec"  # the file's first entry documents the fields
        and isinstance(e.get("max_input_tokens", 0), int)
        and isinstance(e.get("max_output_tokens", 0), int)
    ]
    assert max(windows) > 128_000
    monkeypatch.delenv("SIMULATOR_CONTEXT_WINDOW", raising=False)
    simulator = run_stack.commands(8000, 1, 9100)["simulator"]
    assert int(simulator[simulator.index("--context-window") + 1]) >= max(windows)


def test_the_credentials_are_kept_and_shown_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEGAROUTER_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["prepare.py", "--show"])
    assert prepare.main() == 1  # nothing yet
    summary = {
        "console": "http://127.0.0.1:8000/",
        "api_docs": "http://127.0.0.1:8000/api/docs/",
        "admin_username": "admin",
        "admin_password": "pw",
        "base_url": "http://127.0.0.1:8000/v1",
        "api_key": "mrk_x",
    }
    (tmp_path / "credentials.json").write_text(json.dumps(summary))
    assert prepare.main() == 0
    shown = capsys.readouterr().out
    assert "admin / pw" in shown and "mrk_x" in shown and "make credentials" in shown
