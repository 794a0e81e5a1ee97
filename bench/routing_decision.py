"""Time one routing decision in-process: features + estimate + choose, on realistic prompts.

    .venv/bin/python bench/routing_decision.py [--iterations 2000] [--models 320]

Prints p50 / p99 / max per prompt kind, in microseconds: first the estimator alone (features +
estimate + choose over 12 candidates), then the full routing engine (features + estimate +
hard filters + strategy + deployments + explanation) over a synthetic catalog snapshot of
``--models`` chat models on 8 providers (1-2 deployments each), with warm caches and live
health for every deployment. Needs no server and no database.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routing.complexity import Candidate, RequestFeatures, choose, default_model, estimate

CANDIDATES = [
    Candidate("gpt-4-1106-preview", 10e-6, 30e-6, 0.90),
    Candidate("gpt-3.5-turbo-1106", 1e-6, 2e-6, 0.75),
    Candidate("claude-v2", 8e-6, 24e-6, 0.80),
    Candidate("claude-instant-v1", 0.8e-6, 2.4e-6, 0.72),
    Candidate("mistralai/mixtral-8x7b-chat", 0.6e-6, 0.6e-6, 0.74),
    Candidate("zero-one-ai/Yi-34B-Chat", 0.8e-6, 0.8e-6, 0.76),
    Candidate("meta/llama-2-70b-chat", 0.9e-6, 0.9e-6, 0.66),
    Candidate("mistralai/mistral-7b-chat", 0.2e-6, 0.2e-6, 0.58),
    Candidate("WizardLM/WizardLM-13B-V1.2", 0.3e-6, 0.3e-6, 0.56),
    Candidate("meta/code-llama-instruct-34b-chat", 0.8e-6, 0.8e-6, 0.60),
    Candidate("new-frontier-model", 3e-6, 15e-6, 0.93),  # unknown to the artefact
    Candidate("new-small-model", 0.1e-6, 0.4e-6, 0.60),  # unknown to the artefact
]

PARAGRAPH = (
    "The quarterly report covers revenue, churn and the new pricing experiment. Regional teams "
    "disagree on whether the discount drove the growth or whether seasonality explains it; the "
    "finance lead asks for an analysis that separates the two effects and flags open risks. "
)


def _long_prompt(tokens: int = 8000) -> str:
    text = PARAGRAPH * (tokens * 4 // len(PARAGRAPH) + 1)
    return text[: tokens * 4] + "\n\nSummarize the disagreement and propose a test, step by step."


def _conversation(turns: int = 20) -> list[dict]:
    """A coding-agent session: ``turns`` user turns, each answered by a tool call, its result
    and an assistant reply (the estimator reads the earlier asks too)."""
    asks = [
        "Add a retry with exponential backoff to the HTTP client in client.py.",
        "Now make the maximum delay configurable.",
        "Why does the test for the timeout fail on CI?",
        "Fix it, and keep the old behaviour when no deadline is set.",
        "Thanks. Can you also log each retry at debug level?",
    ]
    messages: list[dict] = [{"role": "system", "content": "You are a coding agent. " * 20}]
    for i in range(turns):
        messages += [
            {"role": "user", "content": asks[i % len(asks)]},
            {"role": "assistant", "content": None, "tool_calls": 1},
            {"role": "tool", "content": "def request(self, method, url):\n    ...\n" * 12},
            {"role": "assistant", "content": "Done: the change is in client.py. " * 6},
        ]
    return messages[:-1]


def workloads() -> dict[str, dict]:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    return {
        "short": {"messages": [{"role": "user", "content": "What is the capital of Australia?"}]},
        "long_8k_tokens": {
            "messages": [
                {"role": "system", "content": "You are a careful analyst."},
                {"role": "user", "content": _long_prompt()},
            ]
        },
        "tools": {
            "messages": [
                {"role": "system", "content": "You can call tools."},
                {"role": "user", "content": "Is it warmer in Oslo or in Lisbon right now?"},
            ],
            "tools": tools,
        },
        "code_multi_turn": {
            "messages": [
                {
                    "role": "user",
                    "content": "Write a Python function that merges two sorted lists.",
                },
                {"role": "assistant", "content": "def merge(a, b):\n    return sorted(a + b)"},
                {"role": "user", "content": "Make it O(n) and explain why it is correct."},
            ]
        },
        "conversation_20_turns": {"messages": _conversation(20)},
    }


def decide(request: dict, willingness: float) -> str:
    features = RequestFeatures.from_messages(
        request["messages"], tools=request.get("tools"), response_format=None
    )
    est = estimate(features)
    return choose(CANDIDATES, est, willingness)[0].candidate.model_id


def engine_setup(n_models: int):  # type: ignore[no-untyped-def]
    """A synthetic snapshot (no database) and an in-process health store with samples."""
    import os
    import random
    from datetime import UTC, datetime
    from decimal import Decimal
    from types import MappingProxyType

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")
    import django

    django.setup()
    from routing.catalog import CatalogSnapshot, DeploymentInfo, ModelInfo, PriceVersion
    from routing.health import LocalHealth

    rng = random.Random(7)
    providers = [f"prov{i}" for i in range(8)]
    models, deployments, by_id = {}, {}, {}
    start = datetime(2025, 1, 1, tzinfo=UTC)
    next_id = 1
    for i in range(n_models):
        provider = providers[i % len(providers)]
        tier = 1 + i % 4
        pin = Decimal(rng.choice(["0.1", "0.25", "0.5", "1", "2.5", "3", "5", "10", "15"]))
        canonical = f"{provider}/model-{i}"
        price = PriceVersion(i, start, pin / 1_000_000, pin * 4 / 1_000_000, None, None, None)
        models[canonical] = ModelInfo(
            id=i, canonical_id=canonical, provider=provider, provider_model_name=f"model-{i}",
            display_name=canonical, family="bench", mode="chat",
            context_window=rng.choice([8_000, 32_000, 128_000, 200_000]),
            max_output_tokens=8_192, supports_tools=rng.random() < 0.7,
            supports_vision=rng.random() < 0.4, supports_json_schema=rng.random() < 0.5,
            supports_reasoning=tier >= 3, supports_streaming=True, supports_prompt_caching=False,
            quality_tier=tier, status="active", prices=(price,),
        )  # fmt: skip
        group = []
        for _ in range(1 + i % 2):
            d = DeploymentInfo(
                id=next_id, name=f"dep-{next_id}", model=canonical, provider=provider,
                kind="openai", base_url="http://127.0.0.1:9100/openai/v1",
                provider_model_name=f"model-{i}", api_version=None,
                region=rng.choice(["us-east-1", "eu-west-1"]), credential_id=None,
                auth_style="bearer", weight=1, priority=0, rpm_limit=None, tpm_limit=None,
                zero_data_retention=rng.random() < 0.5, headers=(),
            )  # fmt: skip
            group.append(d)
            by_id[d.id] = d
            next_id += 1
        deployments[canonical] = tuple(group)
    snapshot = CatalogSnapshot(
        token="bench",  # noqa: S106
        version=1, built_at=time.monotonic(),
        providers=MappingProxyType({}), models=MappingProxyType(models),
        aliases=MappingProxyType({}), ambiguous=MappingProxyType({}),
        deployments=MappingProxyType(deployments), deployments_by_id=MappingProxyType(by_id),
        _ciphertexts=MappingProxyType({}),
    )  # fmt: skip
    store = LocalHealth()
    for d in by_id.values():
        store.record(d.id, ok=rng.random() > 0.05, ttft_ms=rng.uniform(80, 900),
                     latency_ms=rng.uniform(300, 4000))  # fmt: skip
    return snapshot, store


def bench_engine(args: argparse.Namespace) -> None:
    snapshot, store = engine_setup(args.models)  # sets Django up first
    from routing.engine import RouteRequest, route
    from routing.policies import PolicySpec, policy_merge

    deployments = sum(len(v) for v in snapshot.deployments.values())
    print(f"\nfull engine: {len(snapshot.models)} models, {deployments} deployments")
    print("wall clock, and CPU time of this thread (excludes time the OS ran other processes)")
    print(
        f"{'prompt':<18} {'strategy':<13} {'p50 us':>8} {'p99 us':>8} {'max us':>8}"
        f" {'cpu p50':>8} {'cpu p99':>8}  choice"
    )
    policy_by_strategy = {
        s: policy_merge([("organization", PolicySpec(strategy=s, blocked_models=("*-13",)))])
        for s in ("balanced", "cost", "latency", "availability")
    }
    for name, request in workloads().items():
        for strategy, policy in policy_by_strategy.items():

            def decide_full(request: dict = request, policy: Any = policy) -> str:
                features = RequestFeatures.from_messages(
                    request["messages"], tools=request.get("tools"), response_format=None
                )
                decision = route(
                    request=RouteRequest(features=features),
                    policy=policy,
                    snapshot=snapshot,
                    store=store,
                )
                return decision.candidates[0].deployment

            for _ in range(30):
                decide_full()
            samples, cpu = [], []
            for _ in range(args.iterations // 4):
                start = time.perf_counter_ns()
                cpu_start = time.thread_time_ns()
                decide_full()
                cpu.append((time.thread_time_ns() - cpu_start) / 1000)
                samples.append((time.perf_counter_ns() - start) / 1000)
            samples.sort()
            cpu.sort()
            p50 = statistics.median(samples)
            p99 = samples[int(len(samples) * 0.99) - 1]
            c50 = statistics.median(cpu)
            c99 = cpu[int(len(cpu) * 0.99) - 1]
            print(
                f"{name:<18} {strategy:<13} {p50:8.1f} {p99:8.1f} {samples[-1]:8.1f}"
                f" {c50:8.1f} {c99:8.1f}  {decide_full()}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--models", type=int, default=320)
    args = parser.parse_args()
    default_model()  # load the artefact once, as a server process does at start-up
    print(f"{'prompt':<18} {'p50 us':>8} {'p99 us':>8} {'max us':>8}  choice at 0.5")
    for name, request in workloads().items():
        for _ in range(50):
            decide(request, 0.5)
        samples = []
        for i in range(args.iterations):
            w = (i % 11) / 10
            start = time.perf_counter_ns()
            decide(request, w)
            samples.append((time.perf_counter_ns() - start) / 1000)
        samples.sort()
        p50 = statistics.median(samples)
        p99 = samples[int(len(samples) * 0.99) - 1]
        print(f"{name:<18} {p50:8.1f} {p99:8.1f} {samples[-1]:8.1f}  {decide(request, 0.5)}")
    bench_engine(args)


if __name__ == "__main__":
    main()
