"""Model kinds: one module per kind (``tumormap/models/<kind>.py``), registered by kind.

A kind module defines one subclass of ``tumormap.models.base.ModelKind`` decorated with
``@register_kind("<kind>")``. Finding the kinds needs no torch (the module names are the
kinds), so the Snakefile and torch-free rules can check a config without importing them;
``get_kind`` imports the one module a model needs.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_NOT_KINDS = {"base", "backbones", "losses"}
_REGISTRY: dict[str, type] = {}
# Options that say how to run, not what is learned: not part of the model's identity, so
# changing them neither retrains (Snakemake params) nor invalidates a checkpoint.
RUNTIME_OPTIONS = ("workers", "device")


def learned_options(options: dict) -> dict:
    """A model entry's options without the runtime ones."""
    return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}


def known_kinds() -> list[str]:
    """Every model kind this tumormap has (module names under tumormap/models/)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not m.name.startswith("_") and m.name not in _NOT_KINDS)


def register_kind(kind: str):
    """Class decorator: ``@register_kind("mil")`` makes the class the implementation of ``kind``."""

    def decorate(cls):
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise ValueError(f"model kind '{kind}' is registered twice ({_REGISTRY[kind].__module__}, {cls.__module__})")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return decorate


def get_kind(kind: str, where: str = "the config") -> type:
    """The class of a model kind; ``where`` (a card path, a config key) is named in the error."""
    if kind not in known_kinds():
        raise ValueError(f"{where}: unknown model kind '{kind}'; known kinds: {', '.join(known_kinds())}")
    importlib.import_module(f"{__name__}.{kind}")
    if kind not in _REGISTRY:
        raise ValueError(f"tumormap/models/{kind}.py registers no model kind '{kind}' (@register_kind missing)")
    return _REGISTRY[kind]
