"""``python manage.py simulate_providers --port 9100``: run the provider simulator (OpenAI,
Azure OpenAI, Anthropic, Gemini, Bedrock) until interrupted. See docs/simulator.md."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from django.core.management.base import BaseCommand

from gateway.simulator.engine import DEFAULT_CONTEXT_WINDOW
from gateway.simulator.server import Options, start


class Command(BaseCommand):
    help = "Run the provider simulator (fast mode by default; --latency-ms for realistic pacing)."
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument(
            "--latency-ms", type=int, default=0, help="time to first token (default 0: fast)"
        )
        parser.add_argument(
            "--token-ms", type=int, default=0, help="pace between streamed tokens (default 0)"
        )
        parser.add_argument(
            "--context-window",
            type=int,
            default=DEFAULT_CONTEXT_WINDOW,
            help="tokens; prompt + max_tokens above it answer the context-length error",
        )
        parser.add_argument(
            "--no-uvloop", action="store_true", help="use the default asyncio event loop"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        sim_options = Options(
            latency_ms=options["latency_ms"],
            token_ms=options["token_ms"],
            context_window=options["context_window"],
        )
        if not options["no_uvloop"]:
            with contextlib.suppress(ImportError):
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(self._serve(options["host"], options["port"], sim_options))

    async def _serve(self, host: str, port: int, sim_options: Options) -> None:
        server = await start(host, port, sim_options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        self.stdout.write(
            f"provider simulator on {server.url} (openai: {server.url}/openai/v1, "
            f"anthropic: {server.url}/anthropic, gemini: {server.url}/gemini, "
            f"azure: {server.url}/azure, bedrock: {server.url}/bedrock)"
        )
        self.stdout.flush()
        await stop.wait()
        await server.close()
