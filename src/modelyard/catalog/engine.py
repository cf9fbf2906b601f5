"""What the catalog knows of an engine, and the registry of engines by name.

An engine (``modelyard.engines.<name>``) declares its own config table (``Table``: the keys
of ``[models.NAME.engine]``, which also come flat in ``[models.NAME]``), turns a model entry
into a ``ModelSpec`` (``resolve``) and says what a model's files tell about it. The catalog
never tests an engine's name: it asks the engine an entry names.

Engines are plugins: the built-in ones and any other installed package's are found through
the ``modelyard.engines`` entry points; ``register`` adds one at run time.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from modelyard.catalog.entry import ModelEntry
from modelyard.catalog.spec import ModelSpec, default
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.catalog.details import Details

ENTRY_POINTS = "modelyard.engines"

log = logging.getLogger(__name__)

_PATH_REQUIRED = "required (a .gguf file or a model directory)"


class Table(BaseModel):
    """An engine's own keys; none by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Place:
    """Where an entry is resolved: ``where`` names it in errors, relative paths are taken
    from ``base_dir``, and ``server`` holds the ``[server]`` table's keys."""

    where: str
    base_dir: Path
    server: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def path(self, value: str | None) -> Path:
        """An entry's ``path``, which it must give, resolved."""
        if not value:
            raise self.error("path", _PATH_REQUIRED)
        return self.resolve(value)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where} {key}: {message}")


class CatalogEngine:
    """An engine as the catalog sees it; the defaults are a plain OpenAI-compatible server's."""

    name: ClassVar[str] = ""
    Table: ClassVar[type[BaseModel]] = Table
    marker: ClassVar[str | None] = None
    """A key of its table whose presence alone makes an entry run on it (``engine`` unset)."""
    exclusive: ClassVar[Mapping[str, str]] = {}
    """Keys of its table an entry on any other engine may not give, with a hint why."""
    refuses: ClassVar[Mapping[str, str]] = {}
    """Keys an entry on it may not give (another engine's, or shared ones), with a hint."""
    parallel: ClassVar[int] = int(default("parallel"))
    """Requests let through at once unless the entry sets ``parallel``."""

    def takes(self, path: Path) -> bool:
        """It runs an entry with this ``path`` and no ``engine`` (a GGUF file; a directory)."""
        return False

    def resolve(self, spec: ModelSpec, entry: ModelEntry, table: Any, place: Place) -> ModelSpec:
        """The entry's spec: ``spec`` holds the shared keys, ``table`` its own (validated)."""
        return spec

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        """What ``show`` lists as the model's settings."""
        return {"parallel": spec.parallel, "upstream_model": spec.upstream_model}

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        """What the model's files say about it (``show``); may raise ``OSError`` and the
        like when they cannot be read."""
        return {}

    def estimate_parts(self, spec: ModelSpec) -> dict[str, int]:
        """What its estimate counts, part by part (``show``); may raise ``OSError`` and the
        like when the files cannot be read. Empty: it has no parts to tell."""
        return {}

    def prompt_cache(self, spec: ModelSpec) -> int | None:
        """Bytes of host RAM it keeps for cached prompts, part of its estimate; ``None``:
        it keeps none of ours."""
        return None

    def details(self, spec: ModelSpec) -> Details | None:
        """What Ollama's clients read about it from its files; ``None``: nothing."""
        return None

    def abilities(self, spec: ModelSpec, template: str) -> set[str]:
        """Ollama's words for what a chat model of it can do besides completing: ``tools``,
        ``thinking`` (``template``: its chat template, when it has one)."""
        return {"tools"}

    def warnings(self, spec: ModelSpec) -> list[str]:
        """What a user should fix about the entry before using it."""
        return []

    def kept(self, spec: ModelSpec, home: Path) -> dict[str, Any] | None:
        """What its runner keeps of the model across unloads (under ``home``), for ``show``;
        ``None``: nothing. Reads files."""
        return None


_registered: dict[str, CatalogEngine] = {}
_loaded = False


def _load() -> None:
    """The installed engines' entry points, once (the built-in ones are among them)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if point.name in _registered:
            continue
        try:
            factory: Callable[[], CatalogEngine] = point.load()
            _registered[point.name] = factory()
        except Exception as exc:  # another package's plugin: the others still load
            log.warning("engine %r (%s) did not load: %s", point.name, point.value, exc)
    if not _registered:
        raise ConfigError(
            f"no engine is installed (no {ENTRY_POINTS!r} entry points): install modelyard "
            "as a package (pip install -e .) rather than running it from its sources"
        )


def register(engine: CatalogEngine) -> None:
    """Adds an engine (or replaces the one of its name)."""
    _load()
    _registered[engine.name] = engine


def unregister(name: str) -> None:
    _load()
    _registered.pop(name, None)


def names() -> list[str]:
    _load()
    return sorted(_registered)


def engine_named(name: str) -> CatalogEngine:
    _load()
    return _registered[name]


def choose(engine: str | None, table: Mapping[str, Any], path: Path | None, where: str) -> str:
    """The engine an entry runs on: as named, else the one whose marker key it gives, else
    the one that takes its path."""
    known = names()
    if engine is not None and engine not in known:
        raise ConfigError(f"{where} engine: unknown engine {engine!r} (known: {', '.join(known)})")
    for other in known:
        marker = _registered[other].marker
        if marker is not None and marker in table:
            if engine not in (None, other):
                raise ConfigError(f'{where} {marker}: only for engine = "{other}" (not {engine})')
            return other
    if engine is not None:
        return engine
    if path is not None:
        for other in known:
            if _registered[other].takes(path):
                return other
    raise ConfigError(f"{where} path: {_PATH_REQUIRED}")


def validate(name: str, table: Mapping[str, Any], flat: set[str], where: str) -> Any:
    """``table`` checked against the engine's own keys. A key given flat (``flat``) that
    belongs to another engine is refused where that engine or this one says so, and
    otherwise ignored, as it always was, with a warning in the log (it does nothing here);
    any other unknown key is refused."""
    engine = _registered[name]
    own = engine.Table.model_fields
    kept: dict[str, Any] = {}
    for key, value in table.items():
        hint = engine.refuses.get(key)
        if hint is not None:
            raise ConfigError(f"{where} {key}: {hint}")
        if key in own:
            kept[key] = value
            continue
        owners = [o for o in names() if key in _registered[o].Table.model_fields]
        for owner in owners:
            hint = _registered[owner].exclusive.get(key)
            if hint is not None:
                raise ConfigError(f"{where} {key}: only for a {owner} engine ({hint})")
        if key not in flat or not owners:
            raise ConfigError(f"{where} {key}: Extra inputs are not permitted")
        log.warning(
            "%s %s: ignored: a key of the %s engine, and this model runs on the %s engine",
            where,
            key,
            " or ".join(owners),
            name,
        )
    try:
        return engine.Table.model_validate(kept)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(
                f"{where} {'.'.join(str(p) for p in err['loc']) or '(table)'}: "
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()
            )
        ) from None
