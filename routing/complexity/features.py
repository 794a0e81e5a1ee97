"""Request features for complexity estimation, built from plain data (no gateway types).

Everything here runs on the hot path, so it sticks to ``str`` methods and a few precompiled
regular expressions, and it looks at a bounded slice of the text for word n-grams (the head and
tail of the last user turn, where instructions and questions live). Length, code, math and
structure signals are counted on the whole text with C-speed ``str.count``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routing.tokens import tokens_for_chars

# How many characters of the prompt feed the word n-grams: the first HEAD and last TAIL.
NGRAM_HEAD_CHARS = 800
NGRAM_TAIL_CHARS = 700
# Characters per token, the usual rough rule for English text with GPT-style tokenizers.
LONG_CONTEXT_TOKENS = 16_000
# Characters of each earlier ask read in a conversation (the first ask and the one before the
# last turn).
EARLIER_CHARS = 300
# Regular expressions scan at most this many characters (two thirds head, one third tail).
SCAN_CHARS = 2000

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]", re.ASCII)
_CHOICE_RE = re.compile(r"^[ \t]*\(?[A-Ea-e][.)][ \t]+\S", re.M)
_UPPER_RE = re.compile(r"[A-Z]")
_LOWER_RE = re.compile(r"[a-z]")
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_RE = re.compile(r"[.!?](?:\s|$)")
_DECIMAL_RE = re.compile(r"\d[.,]\d|\d/\d|\d\s*%")
_MATH_OP_RE = re.compile(r"\d\s*[-+*/^=<>]\s*\d")


# Cue words, matched against the lower-cased words of the n-gram slice (a set lookup each).
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CODE_WORDS = _words(
    "def return class import lambda elif null const var let void public static println printf "
    "int str dict list array struct select insert join where"
)
_CODE_MARKS = _words("{ } ; [ ] = ( ) < > _")
_CODE_ASK_WORDS = _words(
    "python javascript typescript java rust golang sql regex code function program script "
    "implement debug compile bug algorithm api json html css bash"
)
_MATH_WORDS = _words(
    "solve calculate compute equation equations probability percent percentage sqrt integral "
    "derivative prime matrix polynomial total remainder sum product average ratio fraction "
    "cost costs price dollars hours minutes many much"
)
_REASONING_WORDS = _words(
    "prove proof justify reason reasoning analyze analyse compare evaluate critique derive why "
    "design plan tradeoff tradeoffs explain step steps implications argue"
)
_WRITING_WORDS = _words(
    "write draft compose story poem essay email letter blog rewrite summarize summarise "
    "translate roleplay pretend imagine persuasive tweet slogan"
)

# Stop words that tell common Latin-script languages apart (a few each is enough here).
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _words("the and is of to in that it for you with what how are"),
    "es": _words("el la los las de que y en un una es por para con como"),
    "fr": _words("le la les des de et est un une que pour dans avec qui"),
    "de": _words("der die das und ist nicht ein eine zu mit den auf für wie"),
    "pt": _words("o a os as de que e em um uma para com não como é"),
    "it": _words("il lo la gli le di che e un una per con non come è"),
}

# Dense handcrafted features, in the order the model's weights expect.
DENSE_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "avg_word_len",
    "digit_ratio",
    "upper_ratio",
    "punct_ratio",
    "non_ascii_ratio",
    "questions",
    "choices",
    "code_score",
    "code_ask",
    "math_score",
    "reasoning_score",
    "writing_score",
    "few_shot",
    "ends_with_answer",
    "turns",
    "system_chars",
    "has_tools",
    "has_images",
    "wants_json",
    "numbers",
    "sentences",
    "decimals",
)


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What the estimator knows about one request. Built with ``from_messages``/``from_prompt``.

    ``text`` is the last user turn (the question the router judges); ``dense`` holds the
    handcrafted signals in ``DENSE_FEATURES`` order; ``ngrams`` the word uni- and bigrams of a
    bounded slice of ``text``. ``earlier``: the same features of what the conversation asked
    before (its first user turn and the one before the last, ``EARLIER_CHARS`` of each: the
    estimator lets a harder earlier ask pull a follow-up's estimate toward it);
    ``tool_results`` / ``tool_calls``: the tool messages and assistant tool calls in the
    conversation. Nothing here is stored or logged: it lives for one decision.
    """

    text: str
    dense: tuple[float, ...]
    ngrams: tuple[str, ...]
    input_tokens: int
    language: str
    has_tools: bool = False
    has_images: bool = False
    response_format: str | None = None  # None | "text" | "json_object" | "json_schema"
    max_tokens: int | None = None
    code: bool = False
    math: bool = False
    reasoning: bool = False
    multiple_choice: bool = False
    turns: int = 1
    extra: Mapping[str, float] = field(default_factory=dict)
    earlier: RequestFeatures | None = None
    tool_results: int = 0
    tool_calls: int = 0

    @classmethod
    def from_prompt(cls, prompt: str, **kwargs: Any) -> RequestFeatures:
        """A single user message (the shape of the training data)."""
        return cls.from_messages([{"role": "user", "content": prompt}], **kwargs)

    @classmethod
    def from_messages(
        cls,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Any] | bool | None = None,
        response_format: Mapping[str, Any] | str | None = None,
        max_tokens: int | None = None,
    ) -> RequestFeatures:
        """Build features from OpenAI-style plain data.

        ``messages``: dicts with ``role`` and ``content`` (a string, or a list of parts such as
        ``{"type": "text", "text": ...}`` / ``{"type": "image_url", ...}`` / ``{"type": "image"}``).
        ``tools``: the request's tool list (or just True/False). ``response_format``: the
        OpenAI ``response_format`` object or its ``type`` string. A ``tool`` role message is a
        tool result; an assistant message's ``tool_calls`` (a list, or a count) its calls.
        """
        user_texts: list[str] = []
        system_chars = 0
        total_chars = 0
        tool_results = tool_calls = 0
        has_images = False
        for message in messages:
            role = message.get("role")
            text, images = _content_text(message.get("content"))
            has_images = has_images or images
            total_chars += len(text)
            if role in ("system", "developer"):
                system_chars += len(text)
            elif role == "user":
                user_texts.append(text)
            elif role == "tool":
                tool_results += 1
            elif role == "assistant":
                calls = message.get("tool_calls")
                tool_calls += calls if isinstance(calls, int) else len(calls or ())
        last_user = user_texts[-1] if user_texts else ""
        if not last_user and messages:
            last_user, _ = _content_text(messages[-1].get("content"))
        has_tools = bool(tools)
        if isinstance(response_format, Mapping):
            rf_type: str | None = str(response_format.get("type") or "") or None
        else:
            rf_type = response_format
        wants_json = rf_type in ("json_object", "json_schema")
        earlier = None
        asked_before = [t for t in user_texts[:-1] if t.strip()]
        if asked_before:
            # the task (the first ask) and the context of the follow-up (the ask before it),
            # each cut to its head: a bounded cost however long the conversation
            kept = asked_before[:1] + asked_before[-1:] if len(asked_before) > 1 else asked_before
            joined = "\n".join(t[:EARLIER_CHARS] for t in kept)
            earlier = _build(
                joined,
                total_chars=len(joined),
                system_chars=system_chars,
                turns=1,
                has_tools=has_tools,
                has_images=False,
                response_format=rf_type,
                wants_json=wants_json,
                max_tokens=max_tokens,
            )
        return _build(
            last_user,
            total_chars=total_chars,
            system_chars=system_chars,
            turns=max(len(user_texts), 1),
            has_tools=has_tools,
            has_images=has_images,
            response_format=rf_type,
            wants_json=wants_json,
            max_tokens=max_tokens,
            earlier=earlier,
            tool_results=tool_results,
            tool_calls=tool_calls,
        )


def _content_text(content: Any) -> tuple[str, bool]:
    """(text, has_image) of one message's content in any of the OpenAI shapes."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    parts: list[str] = []
    images = False
    if isinstance(content, Iterable):
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping):
                kind = part.get("type")
                if kind in ("image_url", "image", "input_image"):
                    images = True
                elif isinstance(part.get("text"), str):
                    parts.append(part["text"])
    return "\n".join(parts), images


def ngram_slice(text: str) -> str:
    """The part of ``text`` whose words feed the n-grams: all of it, or its head and tail."""
    if len(text) <= NGRAM_HEAD_CHARS + NGRAM_TAIL_CHARS:
        return text
    return text[:NGRAM_HEAD_CHARS] + " \n " + text[-NGRAM_TAIL_CHARS:]


def tokenize(text: str) -> list[str]:
    """Lower-cased ASCII words and single punctuation marks (non-ASCII runs become one mark)."""
    return _WORD_RE.findall(text.lower())


def word_ngrams(text: str) -> tuple[str, ...]:
    """Unigrams and bigrams (``"a b"``) of the bounded slice, in order, duplicates kept."""
    return _ngrams(tokenize(ngram_slice(text)))


def _ngrams(words: list[str]) -> tuple[str, ...]:
    bigrams = [f"{a} {b}" for a, b in itertools.pairwise(words)]
    return (*words, *bigrams)


def detect_language(text: str) -> str:
    """A coarse language code: script for non-Latin text, stop words for Latin text."""
    sample = text[:1000]
    if sample.isascii():
        return _latin_language(sample)
    sample = sample[:600]
    counts = {"zh": 0, "ja": 0, "ko": 0, "ru": 0, "ar": 0, "hi": 0, "other": 0}
    latin = 0
    for ch in sample:
        code = ord(ch)
        if code < 0x250:
            if ch.isalpha():
                latin += 1
        elif 0x3040 <= code <= 0x30FF:
            counts["ja"] += 1
        elif 0x4E00 <= code <= 0x9FFF:
            counts["zh"] += 1
        elif 0xAC00 <= code <= 0xD7AF:
            counts["ko"] += 1
        elif 0x0400 <= code <= 0x04FF:
            counts["ru"] += 1
        elif 0x0600 <= code <= 0x06FF:
            counts["ar"] += 1
        elif 0x0900 <= code <= 0x097F:
            counts["hi"] += 1
        elif ch.isalpha():
            counts["other"] += 1
    script, best = max(counts.items(), key=lambda item: item[1])
    if best > latin:
        if script == "zh" and counts["ja"] > 0:
            return "ja"
        return "und" if script == "other" else script
    if latin == 0:
        return "und"
    return _latin_language(sample)


def _latin_language(sample: str) -> str:
    if _UPPER_RE.search(sample) is None and _LOWER_RE.search(sample) is None:
        return "und"
    words = sample.lower().split()
    scores = {lang: sum(1 for w in words if w in stop) for lang, stop in _STOPWORDS.items()}
    lang, hits = max(scores.items(), key=lambda item: item[1])
    # English unless another language has clear evidence (short texts share stop words).
    return lang if hits >= 2 and hits > scores["en"] else "en"


_COUNTED = (_NUMBER_RE, _SENTENCE_RE, _DECIMAL_RE)
_WORD_CLASSES = (
    _CODE_MARKS, _CODE_WORDS, _CODE_ASK_WORDS, _MATH_WORDS, _REASONING_WORDS, _WRITING_WORDS
)  # fmt: skip


def _word_counts(words: Sequence[str]) -> list[int]:
    """How many words fall in each of ``_WORD_CLASSES`` (the first class a word is in)."""
    counts = [0] * len(_WORD_CLASSES)
    for word in words:
        for i, vocabulary in enumerate(_WORD_CLASSES):
            if word in vocabulary:
                counts[i] += 1
                break
    return counts


def _scan_slice(text: str) -> str:
    """Ratios and regular expressions look at a bounded slice: the head and tail of long
    prompts."""
    if len(text) <= SCAN_CHARS:
        return text
    return text[: SCAN_CHARS * 2 // 3] + "\n" + text[-(SCAN_CHARS // 3) :]


def _build(
    text: str,
    *,
    total_chars: int,
    system_chars: int,
    turns: int,
    has_tools: bool,
    has_images: bool,
    response_format: str | None,
    wants_json: bool,
    max_tokens: int | None,
    earlier: RequestFeatures | None = None,
    tool_results: int = 0,
    tool_calls: int = 0,
) -> RequestFeatures:
    n_chars = len(text)
    n_words = text.count(" ") + text.count("\n") + (1 if text.strip() else 0)
    n_lines = text.count("\n") + 1
    non_ascii = n_chars - len(text.encode("ascii", "ignore"))
    scan = _scan_slice(text)
    scan_len = max(len(scan), 1)
    digits = sum(scan.count(d) for d in "0123456789")
    punct = sum(scan.count(p) for p in ".,;:!?()[]{}")
    words = tokenize(ngram_slice(text))
    code_marks, code_words, code_ask, math_words, reasoning_score, writing_score = _word_counts(
        words
    )
    fences = scan.count("```")
    code_score = code_words + fences * 3 + (code_marks // 4)
    upper = len(_UPPER_RE.findall(scan[:1000]))
    math_score = math_words + len(_MATH_OP_RE.findall(scan)) + scan.count("\\frac")
    if "step by step" in scan or "step-by-step" in scan:
        reasoning_score += 2
    choices = len(_CHOICE_RE.findall(scan))
    questions = scan.count("?")
    few_shot = scan.count("Answer:") + scan.count("answer:")
    tail = text.rstrip()[-40:].lower()
    ends_with_answer = 1.0 if tail.endswith(("answer:", "a:", "answer")) else 0.0
    numbers, sentences, decimals = (len(r.findall(scan)) for r in _COUNTED)
    sample_len = max(min(n_chars, 1000), 1)
    dense = (
        math.log1p(n_chars),
        math.log1p(n_words),
        math.log1p(n_lines),
        (n_chars / n_words) if n_words else 0.0,
        digits / scan_len,
        upper / sample_len,
        punct / scan_len,
        non_ascii / max(n_chars, 1),
        math.log1p(questions),
        math.log1p(choices),
        math.log1p(code_score),
        math.log1p(code_ask),
        math.log1p(math_score),
        math.log1p(reasoning_score),
        math.log1p(writing_score),
        math.log1p(few_shot),
        ends_with_answer,
        math.log1p(turns - 1),
        math.log1p(system_chars),
        1.0 if has_tools else 0.0,
        1.0 if has_images else 0.0,
        1.0 if wants_json else 0.0,
        math.log1p(numbers),
        math.log1p(sentences),
        math.log1p(decimals),
    )
    return RequestFeatures(
        text=text,
        dense=dense,
        ngrams=_ngrams(words),
        input_tokens=max(1, tokens_for_chars(total_chars)),
        language=detect_language(text),
        has_tools=has_tools,
        has_images=has_images,
        response_format=response_format,
        max_tokens=max_tokens,
        code=code_score >= 3 or (code_ask >= 1 and code_score >= 1) or code_ask >= 2,
        math=math_score >= 2,
        reasoning=reasoning_score >= 2,
        multiple_choice=choices >= 2,
        turns=turns,
        earlier=earlier,
        tool_results=tool_results,
        tool_calls=tool_calls,
    )
