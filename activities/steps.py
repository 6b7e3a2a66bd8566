"""Saga step names, said once: by the activity definitions themselves.

`step_name(activity)` is the name an activity is registered under (its method name); `@compensation` marks
an activity that undoes a step. The workflow names its compensations with `step_name`, and the timeline
tells compensations from steps with `activities.saga.COMPENSATION_NAMES`, so neither repeats a string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity

ActivityFn = TypeVar("ActivityFn", bound=Callable[..., Any])

_MARK = "__saga_compensation__"


def step_name(fn: Callable[..., Any]) -> str:
    """The registered name of an activity (a method decorated with `@activity.defn`).

    Raises TypeError if `fn` is not an activity, ValueError if it is a dynamic (nameless) one."""
    name = activity._Definition.must_from_callable(fn).name
    if name is None:
        raise ValueError(f"{fn!r} is a dynamic activity: it has no name")
    return name


def compensation(fn: ActivityFn) -> ActivityFn:
    """Mark an activity (put it above `@activity.defn`) as the compensation of a saga step."""
    setattr(fn, _MARK, True)
    return fn


def is_compensation(fn: object) -> bool:
    return bool(getattr(fn, _MARK, False))
