"""A role's batch call answers a request it refuses with its ``InputError``, in place."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from contract.records import InputError

Request = TypeVar("Request")
Result = TypeVar("Result")


def compute_valid(
    requests: Sequence[Request],
    validate: Callable[[Request], None],
    compute: Callable[[list[Request]], Sequence[Result | InputError]],
) -> list[Result | InputError]:
    """``compute`` on the requests ``validate`` accepts, each refused one's error in its place."""
    answers: list[Result | InputError | None] = []
    valid: list[Request] = []
    for request in requests:
        try:
            validate(request)
        except InputError as refused:
            answers.append(refused)
            continue
        answers.append(None)
        valid.append(request)
    computed = iter(compute(valid) if valid else [])
    return [next(computed) if answer is None else answer for answer in answers]
