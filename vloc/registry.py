"""Name -> factory lookup shared by the feature, matcher and global-descriptor registries."""
from __future__ import annotations

from typing import Any, Callable, Mapping


def create(registry: Mapping[str, Callable[..., Any]], conf: Any, what: str, **options: Any) -> Any:
    """``registry[conf.name](conf, **options)`` (e.g. ``device``); an unknown name raises
    ``ValueError`` listing the valid ones."""
    try:
        factory = registry[conf.name]
    except KeyError:
        raise ValueError(f"Unknown {what} {conf.name!r}; valid: {', '.join(sorted(registry))}") from None
    return factory(conf, **options)
