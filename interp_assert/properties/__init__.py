"""The property registry: every kind of expectation a spec can state, one module each.

The built-in properties are listed in :data:`BUILTIN`. Another installed package adds its own
through the ``interp_assert.properties`` entry-point group (the way pytest finds plugins)::

    [project.entry-points."interp_assert.properties"]
    sink_rate = "my_package.sink_rate:SinkRate"

Each entry point names an :class:`~interp_assert.properties.base.Expectation` subclass (or a
module or list of them). The spec union, the JSON Schema, capture requests, checks and report
plans are all built from :func:`registered`.
"""

from __future__ import annotations

import sys
from functools import cache
from importlib.metadata import entry_points
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from interp_assert.errors import PropertyPluginError
from interp_assert.properties.ablation_effect import AblationEffect
from interp_assert.properties.attention_stat import AttentionStatBounds
from interp_assert.properties.base import Bounded, CheckContext, Expectation, FigureNeeds, ModelDrift
from interp_assert.properties.composition import Composition
from interp_assert.properties.dominant_layer import DominantLayer
from interp_assert.properties.generated_text import GeneratedText
from interp_assert.properties.head_score import HeadScore
from interp_assert.properties.hidden_norm_ratio import HiddenNormRatio
from interp_assert.properties.hidden_norm_trend import HiddenNormTrend
from interp_assert.properties.layer_score import LayerScore
from interp_assert.properties.logit_diff import LogitDiff
from interp_assert.properties.logit_lens import LogitLensExpectation
from interp_assert.properties.loss import NextTokenLoss
from interp_assert.properties.massive_activation import MassiveActivation
from interp_assert.properties.ov_copying import OvCopying
from interp_assert.properties.patching import Patching
from interp_assert.properties.probe import Probe
from interp_assert.properties.role_fraction import RoleFraction
from interp_assert.properties.sae_feature import SaeFeature
from interp_assert.properties.sae_quality import SaeQuality
from interp_assert.properties.sink_rate import SinkRate
from interp_assert.properties.snapshot import Snapshot
from interp_assert.properties.top_heads import TopHeads

ENTRY_POINT_GROUP = "interp_assert.properties"

BUILTIN: tuple[type[Expectation], ...] = (
    HeadScore,
    TopHeads,
    LayerScore,
    DominantLayer,
    RoleFraction,
    HiddenNormTrend,
    HiddenNormRatio,
    AttentionStatBounds,
    GeneratedText,
    SinkRate,
    MassiveActivation,
    LogitLensExpectation,
    AblationEffect,
    NextTokenLoss,
    Composition,
    OvCopying,
    LogitDiff,
    Patching,
    SaeQuality,
    SaeFeature,
    Probe,
    Snapshot,
)

_REGISTERED_BY_CALL: list[type[Expectation]] = []


def tag_of(cls: type[Expectation]) -> str:
    """The ``property:`` value a class answers to (its ``Literal`` tag)."""
    annotation = cls.model_fields["property"].annotation
    args: tuple[Any, ...] = tuple(getattr(annotation, "__args__", ()))
    if len(args) != 1 or not isinstance(args[0], str):
        raise PropertyPluginError(
            f"{cls.__module__}.{cls.__qualname__}: 'property' must be annotated Literal['<its tag>']"
        )
    return args[0]


def register(cls: type[Expectation]) -> type[Expectation]:
    """Add a property in this process (entry points are the way for installed packages). A decorator."""
    if cls not in _REGISTERED_BY_CALL:
        _REGISTERED_BY_CALL.append(cls)
    return cls


def registered() -> dict[str, type[Expectation]]:
    """Tag -> class for every property: built-in, then entry points, then :func:`register` calls."""
    return _registry(tuple(sys.path), tuple(_REGISTERED_BY_CALL))


@cache
def _registry(_path: tuple[str, ...], by_call: tuple[type[Expectation], ...]) -> dict[str, type[Expectation]]:
    # keyed by sys.path so a package installed (or put on the path) mid-process is found
    found: dict[str, type[Expectation]] = {}
    for cls in (*BUILTIN, *_from_entry_points(), *by_call):
        if not (isinstance(cls, type) and issubclass(cls, Expectation)):
            raise PropertyPluginError(f"{cls!r} is not an interp_assert Expectation subclass")
        tag = tag_of(cls)
        if tag in found and found[tag] is not cls:
            raise PropertyPluginError(
                f"two properties answer to {tag!r}: {found[tag].__module__}.{found[tag].__qualname__} "
                f"and {cls.__module__}.{cls.__qualname__}"
            )
        found[tag] = cls
    return found


def _from_entry_points() -> list[type[Expectation]]:
    classes: list[type[Expectation]] = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as exc:  # a broken plug-in must say which one, not crash collection
            raise PropertyPluginError(
                f"property plug-in {entry.name!r} ({entry.value}) cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(loaded, list | tuple):
            classes.extend(loaded)
        elif isinstance(loaded, type):
            classes.append(loaded)
        else:  # a module: every Expectation subclass it lists in PROPERTIES
            classes.extend(getattr(loaded, "PROPERTIES", ()))
    return classes


def expectation_adapter() -> TypeAdapter[Any]:
    """A validator for one expectation mapping, dispatched on ``property``."""
    return _adapter(tuple(registered().values()))


@cache
def _adapter(classes: tuple[type[Expectation], ...]) -> TypeAdapter[Any]:
    return TypeAdapter(union_type(classes))


def union_type(classes: tuple[type[Expectation], ...] | None = None) -> Any:
    """The tagged union of the registered properties, for pydantic (validation and JSON Schema)."""
    classes = classes or tuple(registered().values())
    return Annotated[Union[classes], Field(discriminator="property")]  # noqa: UP007  (a runtime tuple)


__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "AttentionStatBounds",
    "Bounded",
    "CheckContext",
    "Composition",
    "DominantLayer",
    "Expectation",
    "FigureNeeds",
    "GeneratedText",
    "HeadScore",
    "HiddenNormRatio",
    "HiddenNormTrend",
    "LayerScore",
    "LogitDiff",
    "LogitLensExpectation",
    "MassiveActivation",
    "ModelDrift",
    "OvCopying",
    "Patching",
    "PropertyPluginError",
    "RoleFraction",
    "SinkRate",
    "Snapshot",
    "TopHeads",
    "expectation_adapter",
    "register",
    "registered",
    "tag_of",
    "union_type",
]
