"""Building a named component (loss, optimiser, schedule) from a config spec dict."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ['build_from_spec']


def build_from_spec(what: str, table: Mapping[str, Callable[..., Any]], spec: Mapping[str, Any],
                    *args: Any, **context: Any) -> Any:
    """Call ``table[spec['name']](*args, **options)`` with the spec's other keys as options.

    ``context`` holds values the caller supplies (``num_classes``, ``steps_per_epoch``, ...): each
    is passed only to factories that take it, a spec may not set it, and a None value counts as
    not supplied. An unknown name, an option the factory does not take, or a missing required
    value is a ``ValueError`` that names the ``what`` and lists what is accepted. A string given for
    a ``float`` option is read as a number, since YAML 1.1 loads ``1e-4`` as the string '1e-4'.
    """
    if not isinstance(spec, Mapping) or 'name' not in spec:
        raise ValueError(f'{what} spec must be a mapping with a "name" key, got {spec!r}')
    name = spec['name']
    if name not in table:
        raise ValueError(f'unknown {what} {name!r}; available: {", ".join(sorted(table))}')
    factory = table[name]
    params = {
        p.name: p for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    settable = sorted(set(params) - set(context))
    options = {k: v for k, v in spec.items() if k != 'name'}
    unknown = sorted(set(options) - set(settable))
    if unknown:
        raise ValueError(f'{what} {name!r} does not take {", ".join(unknown)}; '
                         f'it takes: {", ".join(settable) or "no options"}')
    for key, value in options.items():
        if params[key].annotation in ('float', float) and isinstance(value, str):
            try:
                options[key] = float(value)
            except ValueError:
                raise ValueError(f'{what} {name!r}: {key} must be a number, got {value!r}') from None
    supplied = {k: v for k, v in context.items() if k in params and v is not None}
    missing = [k for k, p in params.items()
               if p.default is inspect.Parameter.empty and k not in options and k not in supplied]
    if missing:
        raise ValueError(f'{what} {name!r} needs {", ".join(missing)}')
    return factory(*args, **supplied, **options)
