"""Reading the models' JSON replies tolerantly (UniVid A.5 asks for JSON; small models wrap it in code fences,
prose, single quotes or trailing commas, or break it). Each reader has a defined fallback:

- question type: JSON ``qtype`` → ``qtype: …`` in text → the only one of 'static'/'dynamic' named → None (the
  caller then routes by keywords);
- evaluation: JSON ``score``/``verdict`` → the same fields found by pattern → unreadable = score 0, reject (a score
  outside 0–1 is unreadable too: the model used another scale, e.g. 5 of 10, which must not pass for 1);
- refinement: JSON ``refined_query`` → the field found by pattern → '' (keep the current search text).
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict, dataclass

FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
SMART_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})
TRAILING_COMMA = re.compile(r",\s*([}\]])")
MAX_QUERY_WORDS = 25


def _candidates(text: str):
    """Substrings that may hold a JSON object: fenced blocks first, then the text, then each '{…' span."""
    for block in FENCE.findall(text):
        yield block.strip()
    yield text.strip()
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        depth, in_string, escaped = 0, None, False
        for end in range(start, len(text)):
            ch = text[end]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == in_string:
                    in_string = None
            elif ch in "\"'":
                in_string = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield text[start:end + 1]
                    break


def _load(candidate: str):
    for attempt in (candidate, TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            return json.loads(attempt)
        except (json.JSONDecodeError, ValueError):
            pass
        try:  # Python-style dict: single quotes, True/False/None (a literal, never code)
            value = ast.literal_eval(attempt)
            if isinstance(value, dict):
                return value
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            pass
    return None


def extract_json(text: str | None) -> dict | None:
    """The first JSON object in a model's reply, or None."""
    if not text:
        return None
    text = str(text).translate(SMART_QUOTES)
    for candidate in _candidates(text):
        value = _load(candidate)
        if isinstance(value, dict):
            return value
    return None


def _field(text: str, key: str, pattern: str) -> str | None:
    m = re.search(r"[\"']?" + key + r"[\"']?\s*[:=]\s*" + pattern, text, re.I | re.S)
    return m.group(1) if m else None


def _lower_keys(obj: dict) -> dict:
    return {str(k).strip().lower(): v for k, v in obj.items()}


# -- question type --------------------------------------------------------------------------------------------
def parse_question_type(text: str | None) -> str | None:
    """'static', 'dynamic' or None when the reply does not say."""
    if not text:
        return None
    text = str(text).translate(SMART_QUOTES)
    obj = extract_json(text)
    if obj is not None:
        value = str(_lower_keys(obj).get("qtype", "")).strip().lower()
        if value in ("static", "dynamic"):
            return value
    value = _field(text, "qtype", r"[\"']?(static|dynamic)")
    if value:
        return value.lower()
    named = {w for w in ("static", "dynamic") if re.search(rf"\b{w}\b", text, re.I)}
    return named.pop() if len(named) == 1 else None


DYNAMIC_WORDS = re.compile(
    r"\b(how many|how often|count|counts|counting|times|number of times|before|after|first|last|then|order|"
    r"sequence|change|changes|changed|changing|begin|beginning|start|starts|end|ends|finally|earlier|later|"
    r"until|repeat|repeats|repeated|again|while|during|next|previous|when does|when did)\b", re.I)


def keyword_question_type(question: str) -> str:
    """Fallback router: words about counting, order or change → dynamic, else static."""
    return "dynamic" if DYNAMIC_WORDS.search(question or "") else "static"


# -- evaluation -----------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    score: float | None
    verdict: str                  # 'accept' | 'reject'
    brief_reason: str
    readable: bool

    def accepted(self, threshold: float) -> bool:
        """Accept when the verdict says so or the score reaches τ (UniVid §3.1)."""
        return self.verdict == "accept" or (self.score is not None and self.score >= threshold)

    def as_json(self) -> dict:
        return asdict(self)


def _score(value) -> float | None:
    """The number given as the score (a percentage divided by 100), None when there is none; range not checked."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        m = re.search(r"-?\d+(?:\.\d+)?", str(value))
        if not m:
            return None
        number = float(m.group(0))
        if "%" in str(value)[m.end():m.end() + 2]:
            number /= 100.0
    if number != number:  # NaN
        return None
    return number


def _reason(value) -> str:
    if isinstance(value, (list, tuple)):
        value = "; ".join(str(v) for v in value)
    return " ".join(str(value or "").split())[:300]


def parse_evaluation(text: str | None) -> Evaluation:
    """The Evaluator's {score, verdict, brief_reason}; unreadable or a score outside 0–1 → score 0, reject."""
    text = str(text or "").translate(SMART_QUOTES)
    obj = extract_json(text)
    score = verdict = reason = None
    if obj is not None:
        obj = _lower_keys(obj)
        score = _score(obj.get("score"))
        v = str(obj.get("verdict", "")).strip().lower()
        verdict = v if v in ("accept", "reject") else None
        reason = _reason(obj.get("brief_reason", obj.get("reason", "")))
    if score is None:
        found = _field(text, "score", r"[\"']?(-?\d+(?:\.\d+)?\s*%?)")
        score = _score(found) if found else None
    if verdict is None:
        found = _field(text, "verdict", r"[\"']?(accept|reject)")
        verdict = found.lower() if found else None
    if reason is None:
        found = _field(text, "brief_reason", r"[\"']([^\"']*)")
        reason = _reason(found) if found else ""
    excerpt = " ".join(text.split())[:120]
    if score is None and verdict is None:
        return Evaluation(0.0, "reject", f"evaluator reply could not be read: {excerpt!r}", readable=False)
    if score is not None and not 0.0 <= score <= 1.0:
        return Evaluation(0.0, "reject", f"evaluator score {score:g} is outside 0–1 (another scale?), reply not "
                                         f"used: {excerpt!r}", readable=False)
    if verdict is None:
        verdict = "reject"  # the caller's threshold still accepts a high score
    return Evaluation(score, verdict, reason, readable=True)


# -- refinement -----------------------------------------------------------------------------------------------
def clean_query(text: str, max_words: int = MAX_QUERY_WORDS) -> str:
    words = " ".join(str(text or "").split()).strip(" \"'`").split()
    return " ".join(words[:max_words])


def parse_refinement(text: str | None) -> tuple[str, bool]:
    """(refined query, readable). '' means: keep the current search text."""
    if not text:
        return "", False
    text = str(text).translate(SMART_QUOTES)
    obj = extract_json(text)
    if obj is not None:
        obj = _lower_keys(obj)
        if "refined_query" in obj:
            value = obj["refined_query"]
            return (clean_query(value) if isinstance(value, str) else ""), True
    found = _field(text, "refined_query", r"\"([^\"]*)\"")
    if found is None:
        found = _field(text, "refined_query", r"'([^']*)'")
    if found is not None:
        return clean_query(found), True
    return "", False


NOT_ENOUGH = "Not enough evidence from global caption."


def says_not_enough(answer: str) -> bool:
    return "not enough evidence" in (answer or "").lower()
