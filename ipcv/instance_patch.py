"""Replacing ``forward`` on single module instances, and putting it back exactly.

Both patches (vision blocks, decoder layers) set an instance attribute ``forward`` that wraps
whatever the instance called before (its class's forward, or an instance-level forward someone
else installed, e.g. accelerate's hooks), so the class and other instances stay untouched.
``PerThread`` keeps a patch's per-call state apart between threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torch import nn

ForwardFactory = Callable[[int, nn.Module, Callable[..., Any]], Callable[..., Any]]


class InstanceForwards:
    def __init__(self) -> None:
        self._saved: list[tuple[nn.Module, Any]] = []

    def replace(self, index: int, module: nn.Module, make: ForwardFactory) -> None:
        """Give ``module`` the forward ``make(index, module, current_forward)``."""
        self._saved.append((module, module.__dict__.get("forward")))
        module.forward = make(index, module, module.forward)

    def restore(self) -> None:
        for module, previous in self._saved:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._saved = []


class PerThread:
    """An attribute whose value belongs to the thread that set it: a patch's per-call state, so
    that one patched model called from several threads at once never mixes two calls' state (a
    forward runs its hooks in the thread that called it). Unset, it reads as ``None``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _local(self, obj: Any) -> threading.local:
        return obj.__dict__.setdefault("_per_thread", threading.local())

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(self._local(obj), self.name, None)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(self._local(obj), self.name, value)
