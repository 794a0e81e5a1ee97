"""Time one routing decision in-process: features + estimate + choose, on realistic prompts.

    .venv/bin/python bench/routing_decision.py [--iterations 2000]

Prints p50 / p99 / max per prompt kind, in microseconds, twice: wall-clock time, and the
thread's CPU time (which leaves out time the process spent descheduled: on a loaded shared
machine the wall-clock p99 mostly measures the scheduler). Needs no server and no database.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

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
    }


def decide(request: dict, willingness: float) -> str:
    features = RequestFeatures.from_messages(
        request["messages"], tools=request.get("tools"), response_format=None
    )
    est = estimate(features)
    return choose(CANDIDATES, est, willingness)[0].candidate.model_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    default_model()  # load the artefact once, as a server process does at start-up
    header = "wall p50 / p99 / max us      cpu p50 / p99 / max us"
    print(f"{'prompt':<18} {header}   choice at 0.5")
    for name, request in workloads().items():
        for _ in range(50):
            decide(request, 0.5)
        wall, cpu = [], []
        for i in range(args.iterations):
            w = (i % 11) / 10
            start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
            decide(request, w)
            cpu.append((time.thread_time_ns() - start_cpu) / 1000)
            wall.append((time.perf_counter_ns() - start) / 1000)
        print(f"{name:<18} {_stats(wall)}    {_stats(cpu)}   {decide(request, 0.5)}")


def _stats(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[max(int(len(samples) * 0.99) - 1, 0)]
    return f"{p50:7.1f} {p99:7.1f} {samples[-1]:8.1f}"


if __name__ == "__main__":
    main()
