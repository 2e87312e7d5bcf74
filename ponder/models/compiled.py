"""One compiled graph per model structure, shared by its copies.

`train.compile` compiles a module-level function that takes the module as an argument (the
recursion stack's `_run_stack`, the recurrent cell's `unroll`): the weights are then graph
inputs, so a deep copy of the model (the EMA evaluation's) reuses the graph instead of tracing
its own, and no compiled function bound to one instance is ever kept on a module (a deep copy
could not copy it).

TorchDynamo caches graphs per code object up to its recompile limit (8). `compiled` gives each
(function, backend, structure) its own copy of the function's code, so several models in one
process (a comparison, the GPU smoke test's presets) never push a later one past that limit
into silent eager execution.
"""
from __future__ import annotations

import functools
import types
from typing import Callable

import torch
from torch import nn

_STRUCTURES: list[tuple] = []


def signature(module: nn.Module) -> tuple:
    """The structure of `module`: its modules' types and its parameters' shapes (equal for a
    deep copy)."""
    return tuple((name, type(m).__name__) for name, m in module.named_modules()) + tuple(
        (name, tuple(p.shape)) for name, p in module.named_parameters())


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable, backend: str, structure: tuple, **options) -> Callable:
    """`fn` compiled with `backend` (and torch.compile's `options`) for modules of one `structure`,
    from a copy of its code of its own (module docstring)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{len(_STRUCTURES)}")
    _STRUCTURES.append(structure)
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return torch.compile(copy, backend=backend, **options)
