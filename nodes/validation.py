"""Validation helpers for ``validate_inputs`` (ComfyUI 0.3.75 does not check V3 combo values itself).

ComfyUI attributes a ``validate_inputs`` failure to every input that function takes (execution.validate_inputs
adds one 'custom_validation_failed' error per argument, and the frontend marks each of those inputs). So a node's
``validate_inputs`` takes ONE input, the one worth refusing before anything runs, and the node's other values are
checked when it runs (``require_choice`` and the like: a ValueError that names the input).
"""
from __future__ import annotations


def choice_error(name: str, value, options) -> str | None:
    """An error message if a combo value is not one of its options (None = linked, checked at run time)."""
    if value is None or value in options:
        return None
    return f"{name}: {value!r} is not one of {', '.join(map(str, options))}"


def first_error(*errors: str | None) -> bool | str:
    for error in errors:
        if error:
            return error
    return True


def require_choice(name: str, value, options) -> None:
    """At run time: a ValueError naming the input if a combo value is not one of its options."""
    error = choice_error(name, value, options)
    if error:
        raise ValueError(error)
