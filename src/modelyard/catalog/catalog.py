"""The set of servable models, looked up by name or alias."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from modelyard.catalog.spec import ModelSpec
from modelyard.errors import ModelNotFoundError


class Catalog:
    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._names: dict[str, str] = {}
        for spec in specs:
            self._specs[spec.name] = spec
            for name in (spec.name, *spec.aliases):
                self._names[name] = spec.name

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> ModelSpec:
        """The spec named ``name`` or aliased so, with or without Ollama's ``:latest`` tag;
        ``ModelNotFoundError`` otherwise."""
        canonical = self._names.get(name)
        if canonical is None and name.endswith(":latest"):
            canonical = self._names.get(name.removesuffix(":latest"))  # Ollama's default tag
        if canonical is None:
            raise ModelNotFoundError(
                # Not the names there are: a key may not be allowed to know of them all.
                f"The model {name!r} does not exist (GET /v1/models lists the models you may use)",
                param="model",
            )
        return self._specs[canonical]


@dataclass(frozen=True)
class CatalogChange:
    """What a new catalog changed: model names added, removed, and with new settings."""

    added: list[str]
    removed: list[str]
    changed: list[str]
