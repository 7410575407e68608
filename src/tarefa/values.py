"""What every store can keep: the checks a value passes before it reaches one.

JSON that validates is not always storable: PostgreSQL refuses a NUL character in text and in
``jsonb``, no store can write a lone surrogate (``"\\udfff"``) as UTF-8, integers are kept in
64 bits, and JSON has no NaN or Infinity (encoders would silently write ``null``). Checking here,
once, gives every store the same answer: the value is refused with the path of what is wrong.
"""

from __future__ import annotations

import math
from typing import Any

#: The integers every store keeps exactly (orjson's range: signed and unsigned 64 bits).
INT_RANGE = (-(2**63), 2**64 - 1)
#: How deeply JSON may nest (orjson refuses more than 254 levels).
MAX_DEPTH = 128


class UnstorableValue(ValueError):
    """A value no store can keep as it is; ``path`` names the part (``"hosts.2"``, or ``""``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or 'the value'}: {reason}")
        self.path = path
        self.reason = reason


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (such as \\udfff), which is not valid Unicode"
    return None


def check_text(text: str, path: str = "") -> None:
    """Raise :class:`UnstorableValue` if ``text`` cannot be stored."""
    problem = text_problem(text)
    if problem is not None:
        raise UnstorableValue(path, problem)


def check_json(value: Any, path: str = "", depth: int = 0) -> None:
    """Raise :class:`UnstorableValue` for the first part of a JSON value no store can keep."""
    if depth > MAX_DEPTH:
        raise UnstorableValue(path, f"nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        check_text(value, path)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise UnstorableValue(path, "is an integer beyond 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UnstorableValue(path, "is NaN or infinite, which JSON cannot hold")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            check_text(name, path)
            check_json(item, f"{path}.{name}" if path else name, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{path}.{index}" if path else str(index), depth + 1)


def storable_text(text: str) -> str:
    """``text`` with what cannot be stored replaced (for status lines written by operations)."""
    if text_problem(text) is None:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
