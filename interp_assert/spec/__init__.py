"""Spec files: YAML -> validated, frozen models, with every problem's position.

A spec has a header (model, prompt sets) and a list of expectations. The
header is validated as a whole; each expectation is validated on its own, so
one bad expectation fails alone while its neighbours still run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, TypeAdapter, ValidationError, model_validator

from interp_assert import properties
from interp_assert.errors import Location, SpecError
from interp_assert.measure.loading import hub, placement
from interp_assert.measure.prompt_sets import PromptSet, RandomTokens
from interp_assert.properties import (
    AttentionStatBounds,
    DominantLayer,
    Expectation,
    GeneratedText,
    HeadScore,
    HiddenNormRatio,
    HiddenNormTrend,
    LayerScore,
    RoleFraction,
    Snapshot,
    TopHeads,
)
from interp_assert.properties.snapshot import ToleranceQuantity, ToleranceSpec
from interp_assert.spec.yamlsource import SourceDocument, load_source, read_spec_text
from interp_assert.strict import Strict
from interp_assert.vocab import DType, parse_device

MAX_PROBLEMS = 20  # per expectation (or header); the rest are counted


def _valid_device(text: str) -> str:
    parse_device(text)
    return text


def _checked(check: Any, key: str) -> Any:
    """A validator from one of placement's or hub's checks; the message drops the key pydantic puts first."""

    def validate(value: Any) -> Any:
        try:
            check(value)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix(f"{key} ")) from None
        return value

    return AfterValidator(validate)


class SpecHeader(Strict):
    """Everything in a spec file except its expectations."""

    schema_url: str | None = Field(default=None, alias="$schema")
    model: str = Field(min_length=1)
    dtype: DType = "float32"
    device: Annotated[str, AfterValidator(_valid_device)] = "cpu"
    revision: Annotated[str, _checked(hub.check_revision, "revision")] | None = Field(
        default=None, description="branch, tag or commit sha of a Hugging Face hub model"
    )
    device_map: Annotated[str | dict[str, Any], _checked(placement.check_device_map, "device_map")] | None = Field(
        default=None, description="auto, balanced, balanced_low_0, sequential, or module name -> device (or disk)"
    )
    max_memory: Annotated[dict[str | int, Any], _checked(placement.check_max_memory, "max_memory")] | None = Field(
        default=None, description="device (cpu, 0, cuda:1, ...) -> size such as 20GiB, for device_map"
    )
    offload_folder: str | None = Field(
        default=None, min_length=1, description="folder for weights offloaded to disk (relative to the spec file)"
    )
    prompts: dict[str, PromptSet] = Field(default_factory=dict)  # a spec of weight properties needs none
    snapshot_tolerance: dict[ToleranceQuantity, ToleranceSpec] = Field(default_factory=dict)
    expectations: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _placement(self) -> SpecHeader:
        if self.device_map is not None and "device" in self.model_fields_set:
            raise ValueError("give device (one device) or device_map (weights spread by accelerate), not both")
        if self.device_map is None:
            for key in ("max_memory", "offload_folder"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies only with a device_map; add device_map: auto (or a mapping)")
        return self


@dataclass(frozen=True)
class Entry:
    """One expectation as written: its name, where it is, and either the model or its problems."""

    name: str
    location: Location
    expectation: Expectation | None
    problems: tuple[tuple[Location | None, str], ...]


@dataclass(frozen=True)
class SpecFile:
    path: str
    header: SpecHeader | None
    header_problems: tuple[tuple[Location | None, str], ...]
    entries: tuple[Entry, ...]
    prompt_locations: dict[str, Location]
    model: str | None = None  # the model as written, even when the header is invalid (None: not a string)

    def problems(self) -> list[tuple[Location | None, str]]:
        found = list(self.header_problems)
        for entry in self.entries:
            found.extend(entry.problems)
        return found


def load_spec(path: str | Path, *, shown: str | None = None) -> SpecFile:
    """Read and validate a spec file. Malformed YAML raises :class:`SpecSyntaxError`;
    schema problems are returned inside the :class:`SpecFile` so they fail only their own items.
    ``shown`` is how positions name the file (default: ``path``). A file that cannot be read,
    is not UTF-8 or is too large raises :class:`SpecSyntaxError` too."""
    text = read_spec_text(path, shown or str(path))
    return parse_spec(text, str(path), shown=shown)


def parse_spec(text: str, path: str, *, shown: str | None = None) -> SpecFile:
    doc = load_source(text, shown or path)
    if not isinstance(doc.data, dict):
        raise SpecError([(doc.locate(()), "a spec must be a mapping with 'model', 'prompts' and 'expectations'")])
    header: SpecHeader | None = None
    header_problems: list[tuple[Location | None, str]] = []
    try:
        header = SpecHeader.model_validate(doc.data)
    except ValidationError as exc:
        header_problems = _describe(exc, doc, (), SpecHeader)
    if header is not None and header.offload_folder is not None:
        try:
            placement.check_offload_folder(Path(path).parent / Path(header.offload_folder).expanduser())
        except ValueError as exc:
            header_problems.append((doc.locate(("offload_folder",)), str(exc)))
            header = None
    raw = doc.data.get("expectations")
    entries = _entries(raw if isinstance(raw, list) else [], doc, header, Path(path).parent)
    prompts = doc.data.get("prompts")
    prompt_locations = (
        {str(name): doc.locate(("prompts", str(name)), key=True) for name in prompts}
        if isinstance(prompts, dict)
        else {}
    )
    model = doc.data.get("model")
    return SpecFile(
        path,
        header,
        tuple(header_problems),
        tuple(entries),
        prompt_locations,
        model if isinstance(model, str) and model else None,
    )


def _entries(raw: list[Any], doc: SourceDocument, header: SpecHeader | None, spec_dir: Path) -> list[Entry]:
    # what a property may read while it is validated: where the spec lives (files it names are
    # relative to it) and the spec's prompt sets (a probe's second class, a feature's control set)
    context = {"spec_dir": spec_dir, "prompt_sets": header.prompts if header is not None else None}
    entries: list[Entry] = []
    seen: dict[str, Location] = {}
    for index, item in enumerate(raw):
        at: tuple[str | int, ...] = ("expectations", index)
        location = doc.locate(at)
        name = item.get("name") if isinstance(item, dict) else None
        name = name if isinstance(name, str) and name else f"expectations[{index}]"
        problems: list[tuple[Location | None, str]] = []
        expectation = None
        try:
            expectation = properties.expectation_adapter().validate_python(item, context=context)
        except ValidationError as exc:
            tag = item.get("property") if isinstance(item, dict) else None
            cls = properties.registered().get(tag) if isinstance(tag, str) else None
            problems = _describe(exc, doc, at, cls)
        if name in seen:
            problems.append(
                (
                    doc.locate((*at, "name")),
                    f"duplicate expectation name {name!r} (first on line {seen[name].line}); "
                    "names are test ids and snapshot keys, so each must be unique in its file",
                )
            )
        else:
            seen[name] = location
        prompts = item.get("prompts") if isinstance(item, dict) else None
        if isinstance(prompts, str) and header is not None and prompts not in header.prompts:
            problems.append(
                (
                    doc.locate((*at, "prompts")),
                    f"prompt set {prompts!r} is not defined; defined prompt sets: "
                    f"{', '.join(sorted(header.prompts)) or 'none'}",
                )
            )
        elif (
            expectation is not None
            and expectation.needs_pairs
            and header is not None
            and not header.prompts[expectation.prompts].is_pairs
        ):
            pair_sets = sorted(n for n, p in header.prompts.items() if p.is_pairs)
            problems.append(
                (
                    doc.locate((*at, "prompts")),
                    f"{expectation.property} needs a prompt set of pairs ('pairs' or 'pair_template'); "
                    f"{prompts!r} has none; pair sets here: {', '.join(pair_sets) or 'none'}",
                )
            )
        entries.append(Entry(name, location, expectation if not problems else None, tuple(problems)))
    return entries


def _describe(
    exc: ValidationError, doc: SourceDocument, base: tuple[str | int, ...], cls: type[BaseModel] | None
) -> list[tuple[Location | None, str]]:
    problems: list[tuple[Location | None, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if base and loc and cls is not None and loc[0] in properties.registered():
            loc = loc[1:]  # drop the discriminator tag pydantic inserts
        path = (*base, *loc)
        kind = error["type"]
        dotted = ".".join(str(p) for p in loc)
        if kind == "extra_forbidden":
            valid = _valid_keys(cls, loc[:-1])
            message = f"unknown key {loc[-1]!r}" + (f"; valid keys here: {', '.join(valid)}" if valid else "")
            problems.append((doc.locate(path, key=True), message))
        elif kind == "union_tag_invalid":
            tags = ", ".join(properties.registered())
            message = f"unknown property {error['input'].get('property')!r}; valid properties: {tags}"
            problems.append((doc.locate((*path, "property")), message))
        elif kind == "union_tag_not_found":
            tags = ", ".join(properties.registered())
            problems.append((doc.locate(path), f"missing 'property'; valid properties: {tags}"))
        elif kind == "missing":
            problems.append((doc.locate(path[:-1]), f"missing required key {loc[-1]!r}"))
        else:
            message = error["msg"].removeprefix("Value error, ")
            shown = repr(error["input"]) if not isinstance(error["input"], dict | list) else None
            detail = f" (got {shown})" if shown and kind != "value_error" else ""
            prefix = f"{dotted}: " if dotted else ""
            problems.append((doc.locate(path), f"{prefix}{message}{detail}"))
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], (None, f"... and {more} more problem(s) like these")]
    return problems


def _valid_keys(cls: type[BaseModel] | None, loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model found by walking ``loc`` from ``cls``."""
    current: Any = cls or SpecHeader
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            if current is SpecHeader and "prompts" in loc:
                continue
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of a spec file, for editors (``$schema``)."""

    class SpecDocument(SpecHeader):
        expectations: list[properties.union_type()] = Field(min_length=1)  # type: ignore[valid-type]

    document = TypeAdapter(SpecDocument).json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "interp_assert spec"
    return document


# The property classes are importable from here too (``from interp_assert.spec import HeadScore``).
__all__ = [
    "AttentionStatBounds",
    "DominantLayer",
    "Entry",
    "Expectation",
    "GeneratedText",
    "HeadScore",
    "HiddenNormRatio",
    "HiddenNormTrend",
    "LayerScore",
    "PromptSet",
    "RandomTokens",
    "RoleFraction",
    "Snapshot",
    "SpecFile",
    "SpecHeader",
    "TopHeads",
    "load_spec",
    "parse_spec",
    "spec_json_schema",
]
