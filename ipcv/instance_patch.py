"""Replacing ``forward`` on single module instances, and putting it back exactly.

Both patches (vision blocks, decoder layers) set an instance attribute ``forward`` that wraps
whatever the instance called before (its class's forward, or an instance-level forward someone
else installed, e.g. accelerate's hooks), so the class and other instances stay untouched.
"""

from __future__ import annotations

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
