import math

from routing.complexity.features import (
    DENSE_FEATURES,
    NGRAM_HEAD_CHARS,
    NGRAM_TAIL_CHARS,
    RequestFeatures,
    detect_language,
    ngram_slice,
    word_ngrams,
)


def dense(features: RequestFeatures) -> dict[str, float]:
    return dict(zip(DENSE_FEATURES, features.dense, strict=True))


def test_simple_arithmetic_question_exact_features():
    f = RequestFeatures.from_prompt("What is 2 + 2?")
    assert dense(f) == {
        "log_chars": math.log1p(14),
        "log_words": math.log1p(5),
        "log_lines": math.log1p(1),
        "avg_word_len": 2.8,
        "digit_ratio": 2 / 14,
        "upper_ratio": 1 / 14,
        "punct_ratio": 1 / 14,
        "non_ascii_ratio": 0.0,
        "questions": math.log1p(1),
        "choices": 0.0,
        "code_score": 0.0,
        "code_ask": 0.0,
        "math_score": math.log1p(1),
        "reasoning_score": 0.0,
        "writing_score": 0.0,
        "few_shot": 0.0,
        "ends_with_answer": 0.0,
        "turns": 0.0,
        "system_chars": 0.0,
        "has_tools": 0.0,
        "has_images": 0.0,
        "wants_json": 0.0,
        "numbers": math.log1p(2),
        "sentences": math.log1p(1),
        "decimals": 0.0,
    }
    assert f.input_tokens == 4
    assert f.language == "en"
    assert (f.code, f.math, f.reasoning, f.multiple_choice) == (False, False, False, False)
    assert f.ngrams == ("what", "is", "2", "+", "2", "?", "what is", "is 2", "2 +", "+ 2", "2 ?")


def test_word_ngrams_lowercase_and_punctuation():
    assert word_ngrams("Hello, World") == ("hello", ",", "world", "hello ,", ", world")


def test_multiple_choice_prompt_in_the_mmlu_shape():
    prompt = (
        "Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Helium\nD. Neon\nAnswer:"
    )
    f = RequestFeatures.from_prompt(prompt)
    d = dense(f)
    assert d["choices"] == math.log1p(4)
    assert d["few_shot"] == math.log1p(1)
    assert d["ends_with_answer"] == 1.0
    assert d["log_lines"] == math.log1p(6)
    assert f.multiple_choice is True


def test_code_request_is_flagged_as_code():
    f = RequestFeatures.from_prompt(
        "Write a Python function to reverse a list.\n```python\ndef rev(xs):\n    return xs[::-1]\n```"
    )
    d = dense(f)
    # ask words: python, function, python; code words: list, def, return; 2 fences count 3
    # each; code marks ( ) [ ] count 1 per 4
    assert d["code_ask"] == math.log1p(3)
    assert d["code_score"] == math.log1p(3 + 2 * 3 + 1)
    assert d["writing_score"] == math.log1p(1)  # "write"
    assert f.code is True


def test_reasoning_and_math_cues():
    f = RequestFeatures.from_prompt(
        "Explain step by step why the total cost is 12.5 dollars if 5 pens cost 2.5 each."
    )
    d = dense(f)
    # reasoning words: explain, step, step, why = 4, plus 2 for "step by step"
    assert d["reasoning_score"] == math.log1p(6)
    # math words: total, cost, dollars, cost = 4
    assert d["math_score"] == math.log1p(4)
    assert d["decimals"] == math.log1p(2)
    assert d["numbers"] == math.log1p(3)
    assert (f.reasoning, f.math) == (True, True)


def test_from_messages_conversation_with_image_tools_and_schema():
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {"role": "assistant", "content": "It is a cat."},
        {"role": "user", "content": "And the colour?"},
    ]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    f = RequestFeatures.from_messages(
        messages,
        tools=tools,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        max_tokens=50,
    )
    assert f.text == "And the colour?"
    assert f.turns == 2
    assert f.has_images is True
    assert f.has_tools is True
    assert f.response_format == "json_schema"
    assert f.max_tokens == 50
    assert f.input_tokens == 11  # (9 + 8 + 12 + 15) characters / 4, rounded up
    d = dense(f)
    assert (d["turns"], d["system_chars"]) == (math.log1p(1), math.log1p(9))
    assert (d["has_tools"], d["has_images"], d["wants_json"]) == (1.0, 1.0, 1.0)


def test_no_tools_and_text_response_format():
    f = RequestFeatures.from_messages(
        [{"role": "user", "content": "hi"}], tools=[], response_format="text"
    )
    assert (f.has_tools, f.response_format, f.has_images) == (False, "text", False)
    assert dense(f)["wants_json"] == 0.0


def test_long_prompt_ngrams_come_from_head_and_tail_only():
    text = "alpha " * 2000 + "omega"
    sliced = ngram_slice(text)
    assert len(sliced) == NGRAM_HEAD_CHARS + NGRAM_TAIL_CHARS + 3
    assert sliced.endswith("alpha omega")
    f = RequestFeatures.from_prompt(text)
    assert f.input_tokens == math.ceil(len(text) / 4)
    assert "omega" in f.ngrams
    assert len(f.ngrams) < 600


def test_language_detection():
    assert detect_language("Hello there, how are you today?") == "en"
    assert detect_language("¿Dónde está la biblioteca? Necesito un libro para la clase.") == "es"
    assert detect_language("Où est la gare ? Je cherche le train pour Paris avec mes amis.") == "fr"
    assert detect_language("Привет, как дела?") == "ru"
    assert detect_language("今天天气怎么样") == "zh"
    assert detect_language("東京の天気はどうですか") == "ja"
    assert detect_language("12345 !!!") == "und"


def test_a_conversation_keeps_its_earlier_asks_and_counts_its_tool_traffic():
    messages = [
        {"role": "user", "content": "Write a Python function that parses ISO dates."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}, {"id": "c2"}]},
        {"role": "tool", "content": "ok"},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "   "},
        {"role": "user", "content": "Now add tests."},
    ]
    f = RequestFeatures.from_messages(messages)
    assert f.text == "Now add tests."
    assert (f.turns, f.tool_calls, f.tool_results) == (3, 2, 2)
    # the earlier asks, blank ones left out, featurized like a prompt of their own
    assert f.earlier is not None
    assert f.earlier.text == "Write a Python function that parses ISO dates."
    assert f.earlier.earlier is None and f.earlier.code
    single = RequestFeatures.from_prompt("Now add tests.")
    assert single.earlier is None and (single.tool_calls, single.tool_results) == (0, 0)
    # a count is accepted for the calls too (the gateway passes counts)
    counted = RequestFeatures.from_messages([{"role": "assistant", "tool_calls": 3}])
    assert counted.tool_calls == 3
