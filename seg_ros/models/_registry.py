"""Model registry: networks register a builder by name; everything else builds by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ['build_model', 'get_model_builder', 'list_models', 'register_model']

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar('F', bound=Callable[..., nn.Module])


def register_model(name: str | None = None) -> Callable[[F], F]:
    """Decorator registering a builder ``fn(*, num_classes, **options) -> nn.Module``.

    Registering a name twice is an error: two networks must never answer to one name.
    """

    def decorator(fn: F) -> F:
        key = name or fn.__name__
        if key in _BUILDERS:
            raise ValueError(f'model name {key!r} is already registered (by {_BUILDERS[key].__module__})')
        _BUILDERS[key] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise KeyError(f'unknown model {name!r}; available: {", ".join(list_models())}') from None


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a registered network; an option the builder does not take is an error, not ignored."""
    builder = get_model_builder(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
    accepted = {
        p.name for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != 'num_classes'
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f'model {name!r} does not take option(s) {", ".join(unknown)}; '
            f'it takes: {", ".join(sorted(accepted)) or "none"}'
        )
    return builder(num_classes=num_classes, **options)
