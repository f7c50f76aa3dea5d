"""Prompt texts for the six roles of UniVid A.5 plus the Actor, in our own words (same instructions, not the
paper's text). Each builder returns (system, user)."""
from __future__ import annotations

import json

from .parsing import MAX_QUERY_WORDS, NOT_ENOUGH

NO_CAPTION = "(no caption available)"


def _caption(caption: str) -> str:
    return caption.strip() or NO_CAPTION


def question_type(question: str) -> tuple[str, str]:
    """A.5 (1): route the question to static (expand) or dynamic (shrink)."""
    system = "You sort questions about a video into two kinds. You reply with JSON only."
    user = (
        "The two kinds:\n"
        "- dynamic: answering needs reasoning over time, such as counting events, noticing repetitions, the order "
        "of events, what happens before or after something, the first or last time something happens, or how "
        "something changes.\n"
        "- static: a handful of frames in any order is enough, such as who or what is present, what something "
        "looks like, where the scene is, or a single action.\n\n"
        f"Question: {question}\n\n"
        'Reply with one line of JSON: {"qtype": "static" or "dynamic", "rationale": "one or two short phrases"}')
    return system, user


def frame_note() -> tuple[str, str]:
    """A.5 (5): notes on one frame, for the global caption."""
    system = "You describe single frames of a video for a video question-answering system."
    user = (
        "Describe what this one frame shows, briefly and specifically.\n"
        "1. Living beings: how each one looks (appearance, clothing, colour, species), its likely role, and what "
        "it is doing.\n"
        "2. Objects and setting: notable things and their state (colour, shape, open or closed, on or off, whole "
        "or broken) and the kind of place (indoors or outdoors, clues about the location).\n"
        "Write 2 to 4 short sentences about what is visible only; do not guess.")
    return system, user


def caption_summary(notes: list[str]) -> tuple[str, str]:
    """A.5 (2): merge the frame notes, earliest first, into the global caption C_g."""
    system = "You merge notes about the frames of one video into a single caption. You never add facts."
    listed = "\n".join(f"{i + 1}. {' '.join(n.split()) or '(empty)'}" for i, n in enumerate(notes))
    user = (
        f"Notes on frames of one video, earliest first:\n{listed}\n\n"
        "Write one caption of 2 to 4 sentences for the whole video. Cover (1) the moving subjects, described "
        "consistently across frames, and what they do over time; (2) the static objects and the setting, with "
        "their states; (3) changes over time only where the notes show them (for example 'then', 'later', "
        "'again'). Keep it short and factual: no lists, no story, no frame-by-frame account.")
    return system, user


def frame_lines(labels: list[str]) -> str:
    return "\n".join(f"Image {i + 1}: {label}" for i, label in enumerate(labels))


def actor(question: str, caption: str, labels: list[str]) -> tuple[str, str]:
    """The Actor answers from the ordered working set W, conditioned on C_g (Alg. 1 line 9)."""
    system = "You answer questions about a video from a few of its frames."
    user = (
        f"The {len(labels)} images are frames of the video in the order they occur, earliest first:\n"
        f"{frame_lines(labels)}\n\n"
        f"Caption of the whole video (from evenly spaced frames; it may miss details): {_caption(caption)}\n\n"
        f"Question: {question}\n\n"
        "Answer from what the frames show and use the caption only as background. When the question is about "
        "order, change or how often something happens, compare the frames in their order. Give a short, direct "
        "answer of one or two sentences.")
    return system, user


EXAMPLE_CASE = (
    "Question: What colour is the car that overtakes the cyclist?\n"
    "Video caption: A cyclist in a yellow jacket rides along a city street; a red car overtakes the cyclist, "
    "then stops at a crossing.\n"
    "Frames used: 4 frames between 1.0 s and 6.5 s\n"
    "Answer: The car is blue.")
EXAMPLE_REPLY = {"score": 0.1, "verdict": "reject", "brief_reason": "caption says the car is red"}


def evaluator(question: str, caption: str, answer: str, frames_used: str, threshold: float) -> tuple[str, str]:
    """A.5 (3): score 0..1, verdict and a brief reason, one line of JSON (the value signal of §2.4)."""
    system = ("You check answers of a video question-answering system. You reply with a single line of JSON, no "
              "Markdown and no code block.")
    user = (
        "Judge how likely the answer is correct and complete for the question, given the evidence. Fields:\n"
        '- "score": a number from 0 to 1;\n'
        f'- "verdict": "accept" if the score is {threshold:g} or more, otherwise "reject";\n'
        '- "brief_reason": one or two short phrases.\n\n'
        f"Example case:\n{EXAMPLE_CASE}\n"
        f"Example reply: {json.dumps(EXAMPLE_REPLY)}\n\n"
        "Case to judge:\n"
        f"Question: {question}\n"
        f"Video caption: {_caption(caption)}\n"
        f"Frames used: {frames_used}\n"
        f"Answer: {answer.strip() or '(empty)'}\n\n"
        "Reply with the JSON only.")
    return system, user


def reflector(question: str, caption: str, search_text: str, answer: str, evaluation: dict,
              threshold: float) -> tuple[str, str]:
    """A.5 (4): diagnose the failure and return a short declarative search text for the next round."""
    system = ("You improve the search text that a video question-answering system uses to pick keyframes. You reply "
              "with JSON only.")
    user = (
        "The last answer was judged unreliable. Work out the likely cause, for example a missing object or person, "
        "the wrong part of the video, an unclear reference, or a moment that is brief or hidden, and write a new "
        "search text for choosing frames.\n"
        "Rules:\n"
        '1. Reply only with {"refined_query": "..."}.\n'
        f"2. The text is one statement, not a question, of at most {MAX_QUERY_WORDS} words.\n"
        "3. Name concrete visible cues: objects, colours, clothing, actions and their phase, left or right, first "
        "or last, before or after.\n"
        "4. Use only what the question or the caption support; invent nothing.\n"
        f"5. If the answer already looks reliable (score {threshold:g} or more, or verdict accept), give an empty "
        "string.\n\n"
        f"Question: {question}\n"
        f"Video caption: {_caption(caption)}\n"
        f"Current search text: {search_text}\n"
        f"Last answer: {answer.strip() or '(empty)'}\n"
        f"Evaluation: {json.dumps(evaluation)}")
    return system, user


def global_answer(question: str, caption: str) -> tuple[str, str]:
    """A.5 (6): the fallback answer from the global caption alone."""
    system = "You answer questions about a video from its caption alone."
    user = (
        f"Question: {question}\n"
        f"Caption of the whole video (from evenly spaced frames; details may be missing): {_caption(caption)}\n\n"
        "Answer in one or two sentences using only the caption. If the caption does not give the answer, reply "
        f"exactly: {NOT_ENOUGH}")
    return system, user
