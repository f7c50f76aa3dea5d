"""Validation helpers for ``validate_inputs`` (ComfyUI 0.3.75 does not check V3 combo values itself)."""
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
