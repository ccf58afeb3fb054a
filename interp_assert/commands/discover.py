"""``interp-assert discover``: measure a model and write a spec of what it finds.

Every finding becomes an expectation whose bound sits a margin below (or
above) the measured value, with the measured number in its ``description``.
Before the file is written its text is parsed back with :func:`parse_spec` and
every expectation is evaluated on the very measurements it came from, so a
discovered spec always passes on the model it was discovered on.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp_assert.errors import InterpAssertError, Location, SpecError
from interp_assert.properties import ablation_effect, logit_lens, massive_activation, sink_rate
from interp_assert.properties.findings import (
    DiscoverSettings,
    Section,
    head_findings,
    norm_findings,
    sharpness_findings,
)
from interp_assert.spec import PromptSet, SpecFile, parse_spec
from interp_assert.vocab import Role

# The shipped SmolLM2 spec's prose, so discovered numbers compare with it directly.
PROSE_TEXTS = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the lamp. Ships passing the "
    "rocky coast relied on its beam to find their way home through the fog.",
    "In the spring of 1905, a young patent clerk in Bern published four papers that would change physics. "
    "One of them explained the photoelectric effect, and another introduced special relativity.",
    "Bread is made from flour, water, salt and yeast. The dough is kneaded, left to rise for a few hours, "
    "shaped into loaves and baked in a hot oven until the crust turns golden brown.",
)
REPEAT_LENGTH = 50

# Which head roles a prompt set can reveal: positional roles on text; copying roles need repeats.
ROLES_ON_TEXT: tuple[Role, ...] = ("previous_token", "first_token", "self")
ROLES_ON_REPEATS: tuple[Role, ...] = ("induction", "duplicate_token")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Discovered:
    text: str
    spec: SpecFile
    n_expectations: int


# ---- prompt sets ----


def default_prompt_sets(loaded: Any) -> dict[str, PromptSet]:
    """Natural prose, and random token blocks repeated twice (for induction and duplicate-token heads)."""
    bos = "prepend" if loaded.tokenizer.bos_token_id is not None else "none"
    context = getattr(loaded.config, "max_position_embeddings", None) or 1024
    length = max(2, min(REPEAT_LENGTH, (int(context) - 1) // 2))
    return {
        "prose": PromptSet.model_validate({"bos": bos, "texts": list(PROSE_TEXTS)}),
        "repeated": PromptSet.model_validate(
            {"bos": bos, "random_tokens": {"length": length, "repeats": 2, "count": 4, "seed": 0}}
        ),
    }


def read_prompt_sets(path: Path) -> dict[str, PromptSet]:
    """Prompt sets from a YAML file in spec format (a ``prompts:`` mapping; anything else is ignored)."""
    from pydantic import ValidationError

    from interp_assert.spec.yamlsource import load_source, read_spec_text

    doc = load_source(read_spec_text(path), str(path))
    raw = doc.data.get("prompts") if isinstance(doc.data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise SpecError([(doc.locate(()), "a prompt file needs a 'prompts:' mapping of name -> prompt set")])
    found: dict[str, PromptSet] = {}
    problems: list[tuple[Location | None, str]] = []
    for name, body in raw.items():
        try:
            found[str(name)] = PromptSet.model_validate(body)
        except ValidationError as exc:
            for error in exc.errors():
                where = tuple(str(part) for part in error["loc"])
                if error["type"] == "missing":
                    message, where = f"missing required key {where[-1]!r}", where[:-1]
                elif error["type"] == "extra_forbidden":
                    message = f"unknown key {where[-1]!r}"
                else:
                    message = ".".join(where) + ": " + error["msg"].removeprefix("Value error, ")
                problems.append((doc.locate(("prompts", name, *where)), f"prompt set {name!r}: {message}"))
    if problems:
        raise SpecError(problems)
    return found


def roles_for(prompt_set: PromptSet) -> tuple[Role, ...]:
    """Texts are searched for every head role (a text that repeats tokens can show copying heads;
    one that does not leaves them unmeasurable, which the spec notes); random repeats for copying."""
    return (*ROLES_ON_TEXT, *ROLES_ON_REPEATS) if prompt_set.texts is not None else ROLES_ON_REPEATS


def flag_token_driven(sections: list[Section], loaded: Any, prompt_sets: dict[str, PromptSet]) -> None:
    """Say in a head expectation's description when its score comes mostly from one frequent
    query token (commas attending to earlier commas), so no one mistakes it for a mechanism."""
    from interp_assert.measure.capture import attribution
    from interp_assert.measure.measurements import CaptureRequest
    from interp_assert.runner import measure_named
    from interp_assert.vocab import TARGET_ROLES, parse_head

    claims: dict[str, list[dict[str, Any]]] = {}
    for section in sections:
        for expectation in section.expectations:
            if expectation.get("property") == "head_score" and expectation.get("role") in TARGET_ROLES:
                claims.setdefault(str(expectation["prompts"]), []).append(expectation)
    for prompt_name, expectations in claims.items():
        heads = frozenset(parse_head(str(e["head"])) for e in expectations)
        measured = measure_named(loaded, prompt_name, prompt_sets[prompt_name], CaptureRequest(patterns=heads))
        for expectation in expectations:
            pattern = measured.patterns[parse_head(str(expectation["head"]))]
            rows = attribution.row_scores(pattern, measured.pattern_tokens, expectation["role"])
            found = attribution.dominant_token(rows, measured.pattern_tokens)
            if found is not None:
                expectation["description"] += (
                    f"; flag: {found.share:.0%} of it comes from the {found.rows} rows whose query is "
                    f"{found.token!r} (sequence 0), so it may describe that token rather than a mechanism"
                )


# ---- the whole discovery ----


def discover(
    model: str,
    output: Path,
    *,
    loaded: Any,
    prompt_sets: dict[str, PromptSet],
    settings: DiscoverSettings,
    progress: Progress = lambda _: None,
    sae: str | None = None,
) -> Discovered:
    """Measure ``loaded`` on ``prompt_sets`` and return the spec text (validated and self-checked)."""
    from interp_assert.measure.measurements import CaptureRequest
    from interp_assert.runner import measure_named

    used: set[str] = set()
    sections: list[Section] = []
    measured: dict[str, Any] = {}
    first_set = next((n for n, p in prompt_sets.items() if not p.is_pairs), "")
    for name, prompt_set in prompt_sets.items():
        progress(f"measuring {name!r}")
        if prompt_set.is_pairs:  # the logit difference and patching, not head roles
            found, measured[name] = pair_sections(loaded, name, prompt_set, settings, used, progress)
            sections += found
            continue
        roles = set(roles_for(prompt_set))
        extras = name == first_set  # norms and sharpness: on the first prompt set only
        request = CaptureRequest(
            roles=frozenset(roles | ({"focus"} if extras else set())),
            attention_stats=extras,
            hidden_norms=extras,
            activation_peaks=extras,
            logit_lens=extras,
        )
        measured[name] = measure_named(loaded, name, prompt_set, request)
        for role in roles_for(prompt_set):
            sections.append(head_findings(name, role, measured[name].role_scores[role], settings, used))
    flag_token_driven(sections, loaded, prompt_sets)
    sections += ablation_sections(loaded, prompt_sets, sections, measured, settings, used)
    progress("reading composition and copying scores from the weights")
    sections += weight_sections(loaded, sections, measured, settings, used)
    first_set = next((n for n, p in prompt_sets.items() if not p.is_pairs), "")
    if not first_set:  # only pair sets: nothing else to write
        return _finish(model, output, loaded, prompt_sets, sections, settings, measured)
    first = measured[first_set]
    sections.append(norm_findings(first_set, first.hidden_norms_without_first, settings, used))
    sharpness = {"max": first.max_weight.max(axis=1), "focus": first.role_scores["focus"].mean(axis=1)}
    sections.append(sharpness_findings(first_set, sharpness, settings, used))
    if "first_token" in first.role_scores:
        sections.append(sink_rate.findings(first_set, first.role_scores["first_token"], settings, used))
    if first.activation_peaks is not None:
        sections.append(massive_activation.findings(first_set, first.activation_peaks, settings, used))
    if first.logit_lens is not None:
        sections.append(logit_lens.findings(first_set, first.logit_lens, settings, used))
    if sae is not None:
        progress("measuring the SAE")
        sections.append(sae_section(loaded, sae, output, prompt_sets, measured, settings, used))
        progress("looking for the SAE's clearest features")
        sections.append(feature_section(loaded, sae, output, prompt_sets, settings, used))
    return _finish(model, output, loaded, prompt_sets, sections, settings, measured)


def _finish(
    model: str,
    output: Path,
    loaded: Any,
    prompt_sets: dict[str, PromptSet],
    sections: list[Section],
    settings: DiscoverSettings,
    measured: dict[str, Any],
) -> Discovered:
    header = {"model": spec_model_reference(model, output)}
    if loaded.options.revision is not None:
        header["revision"] = loaded.options.revision
    header["dtype"] = loaded.options.dtype
    if isinstance(loaded.options.device_map, str):  # a strategy carries over to another machine; a mapping may not
        header["device_map"] = loaded.options.device_map
    else:
        header["device"] = loaded.options.device
    text = render(model, loaded, header, prompt_sets, sections, settings)
    spec = parse_spec(text, str(output))
    problems = spec.problems()
    if problems:
        from interp_assert.errors import InternalError

        raise InternalError(f"internal error: the discovered spec is invalid: {problems[0][1]}")
    measure_written_features(loaded, spec, prompt_sets, measured)
    check_discovered(spec, measured)
    return Discovered(text, spec, len(spec.entries))


def sae_section(
    loaded: Any,
    sae: str,
    output: Path,
    prompt_sets: dict[str, PromptSet],
    measured: dict[str, Any],
    settings: DiscoverSettings,
    used: set[str],
) -> Section:
    """The SAE's quality on the first prompt set of texts (``sae`` written relative to the spec)."""
    from dataclasses import replace

    from interp_assert.properties import sae_quality
    from interp_assert.properties.representation import HUB_ID

    name = next((n for n, p in prompt_sets.items() if p.texts is not None), None)
    if name is None:
        return Section("SAE quality", notes=["no prompt set of texts to measure the SAE on"])
    hub = HUB_ID.match(sae) is not None
    where = sae if hub else str(Path(sae).expanduser().resolve())
    if not hub and not Path(where).is_dir():
        raise SpecError([(None, f"--sae {sae}: no such folder")])
    written = sae if hub else sae_written_as(where, output)
    request = sae_quality.SaeQualityRequest(where, None, True)
    found = request.run(loaded, _batches(loaded, prompt_sets[name]))
    measured[name] = replace(measured[name], extras={**measured[name].extras, request: found})
    return sae_quality.findings(name, where, written, found, settings, used)


def sae_written_as(folder: str, output: Path) -> str:
    """An SAE folder as the spec names it: a shipped SAE by its name, else relative to the spec."""
    builtin = Path(__file__).resolve().parent.parent / "builtin_saes"
    if Path(folder).parent == builtin:
        return Path(folder).name
    return os.path.relpath(folder, output.resolve().parent)


def directions_file(output: Path) -> Path:
    """Where ``discover --sae`` stores the decoder rows of the features it writes: beside the spec."""
    return output.with_suffix(".safetensors")


def feature_section(
    loaded: Any, sae: str, output: Path, prompt_sets: dict[str, PromptSet], settings: DiscoverSettings, used: set[str]
) -> Section:
    """The SAE's clearest features (:func:`interp_assert.properties.sae_feature.clearest`) over the
    prompt sets of texts, each against the others; their decoder rows are written (atomically) to
    :func:`directions_file`, which the expectations name."""
    from interp_assert.measure.features import sae_runs, sae_search
    from interp_assert.properties import sae_feature
    from interp_assert.properties.representation import HUB_ID, save_directions

    texts = [name for name, prompt_set in prompt_sets.items() if prompt_set.texts is not None]
    if len(texts) < 2:
        return Section(
            "SAE features",
            notes=[
                f"finding clear features needs two or more prompt sets of texts (each is the others' control); "
                f"found {len(texts)}: pass --prompts FILE with, say, code and prose"
            ],
        )
    hub = HUB_ID.match(sae) is not None
    where = sae if hub else str(Path(sae).expanduser().resolve())
    written = sae if hub else sae_written_as(where, output)
    found = sae_runs.cached_sae(where, None)
    means = {name: sae_search.latent_means(loaded, found, _batches(loaded, prompt_sets[name])) for name in texts}
    features = sae_feature.clearest(means)
    target = directions_file(output)
    section, stored = sae_feature.findings(features, written, target.name, settings, used)
    if not features:
        section.notes.append(
            f"no latent is {sae_feature.CLEAR_RATIO:g}x more active on one prompt set than on every other"
        )
        return section
    rows = sae_search.decoder_rows(found, list(stored.values()))
    identity = found.identity
    metadata = {"sae": str(identity.get("path", where)), "sae_sha256": str(identity.get("sha256", "")),
                "written_by": "interp-assert discover --sae"}  # fmt: skip
    save_directions(target, {name: rows[latent] for name, latent in stored.items()}, metadata)
    return section


def measure_written_features(
    loaded: Any, spec: SpecFile, prompt_sets: dict[str, PromptSet], measured: dict[str, Any]
) -> None:
    """Each written ``sae_feature`` measured as the spec will measure it (its own request), so the
    self-check reads the spec's numbers, not the search's."""
    from dataclasses import replace

    for entry in spec.entries:
        expectation = entry.expectation
        if expectation is None or expectation.property != "sae_feature":
            continue
        request = expectation.request()  # type: ignore[attr-defined]
        name = expectation.prompts
        found = request.run(loaded, _batches(loaded, prompt_sets[name]))
        measured[name] = replace(measured[name], extras={**measured[name].extras, request: found})


def _batches(loaded: Any, prompt_set: PromptSet) -> list[Any]:
    from interp_assert.measure.capture.prompts import build_batches
    from interp_assert.measure.capture.run import max_positions

    return build_batches(
        prompt_set, loaded.tokenizer, vocab_size=int(loaded.config.vocab_size), max_positions=max_positions(loaded)
    )


def ablation_sections(
    loaded: Any,
    prompt_sets: dict[str, PromptSet],
    sections: list[Section],
    measured: dict[str, Any],
    settings: DiscoverSettings,
    used: set[str],
) -> list[Section]:
    """Zero the induction heads found on each repeated-token set, with a seeded random control;
    the loss counts from the second copy's second token (its first cannot be predicted)."""
    from dataclasses import replace

    from interp_assert.measure.measurements import AblationRequest, CaptureRequest
    from interp_assert.runner import measure_named
    from interp_assert.vocab import parse_head

    found = []
    for name, prompt_set in prompt_sets.items():
        repeats = prompt_set.random_tokens
        heads = [
            str(e["head"])
            for section in sections
            for e in section.expectations
            if e["prompts"] == name and e["property"] == "head_score" and e["role"] == "induction"
        ]
        if repeats is None or repeats.repeats < 2 or not heads:
            continue
        request = AblationRequest(
            heads=tuple(sorted(parse_head(h) for h in heads)), controls=ablation_effect.DISCOVER_CONTROLS
        )
        ablated = measure_named(loaded, name, prompt_set, CaptureRequest(ablations=frozenset([request])))
        measured[name] = replace(measured[name], token_losses=ablated.token_losses, ablations=ablated.ablations)
        assert ablated.token_losses is not None
        positions = [(prompt_set.bos == "prepend") + repeats.length + 1, -1]
        found.append(
            ablation_effect.findings(
                name, request, ablated.token_losses, ablated.ablations[request], positions, settings, used
            )
        )
    return found


def pair_sections(
    loaded: Any,
    name: str,
    prompt_set: PromptSet,
    settings: DiscoverSettings,
    used: set[str],
    progress: Progress,
) -> tuple[list[Section], Any]:
    """A pair set: the logit difference; every head screened by attribution patching in both
    directions, the top candidates (and the largest direct effects) confirmed by exact patching;
    returns the sections and the measurements the written expectations are checked against."""
    from interp_assert.errors import PromptError
    from interp_assert.measure.capture.prompts import build_batches
    from interp_assert.measure.capture.run import _quiet, max_positions

    try:
        batches = build_batches(
            prompt_set, loaded.tokenizer, vocab_size=int(loaded.config.vocab_size), max_positions=max_positions(loaded)
        )
    except PromptError as exc:
        raise InterpAssertError(f"prompt set {name!r}: {exc}") from None
    with _quiet():  # transformers says for every forward that GPT-Neo keeps its attention implementation
        return _pair_sections(loaded, name, prompt_set, batches, settings, used, progress)


def _pair_sections(
    loaded: Any,
    name: str,
    prompt_set: PromptSet,
    batches: list[Any],
    settings: DiscoverSettings,
    used: set[str],
    progress: Progress,
) -> tuple[list[Section], Any]:
    import numpy as np

    from interp_assert.measure.counterfactual import patching as sweep
    from interp_assert.measure.counterfactual.pair_request import PairRequest
    from interp_assert.measure.measurements import CaptureRequest
    from interp_assert.measure.pair_requests import Component
    from interp_assert.properties import expectation_adapter
    from interp_assert.properties import patching as patching_property
    from interp_assert.runner import measure_named

    base = PairRequest().run(loaded, batches)
    sections = [patching_property.logit_diff_findings(name, base, settings, used)]
    clean, corrupt = float(base.clean.mean()), float(base.corrupt.mean())
    if abs(clean - corrupt) < patching_property.MIN_GAP:
        sections[0].notes.append(f"clean {clean:.6f} and corrupt {corrupt:.6f} coincide: no patching findings")
    else:
        gap = clean - corrupt
        for direction in ("denoise", "noise"):
            reference = corrupt if direction == "denoise" else clean
            sign = 1.0 if direction == "denoise" else -1.0
            screen = sweep.attribution(loaded, batches, direction).mean(axis=-1) / gap
            direct_result = PairRequest(direction=direction, effect="direct", all_heads=True).run(loaded, batches)
            assert direct_result.heads is not None
            direct = (direct_result.heads.mean(axis=-1) - reference) / gap
            n_heads = screen.shape[1]
            order = [int(i) for i in np.argsort(-sign * screen.ravel(), kind="stable")[: patching_property.SCREENED]]
            order += [int(i) for i in np.argsort(-sign * direct.ravel(), kind="stable")[:4] if int(i) not in order]
            candidates = [(i // n_heads, i % n_heads) for i in order]
            sets = tuple((Component("head", layer, head),) for layer, head in candidates)
            exact_result = PairRequest(direction=direction, sets=sets).run(loaded, batches)
            exact = {
                head: (float(values.mean()) - reference) / gap
                for head, values in zip(candidates, exact_result.patched, strict=True)
                if values is not None
            }

            def joint(
                heads: tuple[tuple[int, int], ...], direction: str = direction, reference: float = reference
            ) -> float:
                components = tuple(Component("head", layer, head) for layer, head in heads)
                found = PairRequest(direction=direction, sets=(components,)).run(loaded, batches).patched[0]  # type: ignore[arg-type]
                assert found is not None
                return (float(found.mean()) - reference) / gap

            section = patching_property.findings(name, base, direction, screen, direct, exact, joint, settings, used)
            for note in section.notes:  # the screen's quality is said, not only written into the spec
                progress(f"{name} ({direction}): {note}")
                print(f"discover: {name} ({direction}): {note}", file=sys.stderr)
            sections.append(section)
    adapter = expectation_adapter()
    request = CaptureRequest()
    for section in sections:
        for expectation in section.expectations:
            request = request | adapter.validate_python(expectation).requirements()
    return sections, measure_named(loaded, name, prompt_set, request)


def weight_sections(
    loaded: Any, sections: list[Section], measured: dict[str, Any], settings: DiscoverSettings, used: set[str]
) -> list[Section]:
    """K-composition from the found previous-token heads into the found induction heads, and the
    strongest copying heads; their measurements are kept under ``measured[""]`` (no prompt set)."""
    from interp_assert.measure.measurements import CaptureRequest
    from interp_assert.properties import composition, ov_copying
    from interp_assert.runner import measure_weights
    from interp_assert.vocab import parse_head

    found: dict[str, list[tuple[int, int]]] = {"previous_token": [], "induction": []}
    for section in sections:
        for expectation in section.expectations:
            role = expectation.get("role")
            if expectation.get("property") == "head_score" and role in found:
                found[role].append(parse_head(expectation["head"]))
    senders, receivers = sorted(set(found["previous_token"])), sorted(set(found["induction"]))
    requests: list[Any] = [ov_copying.CopyingRequest()]
    pairs = [(s, r) for s in senders for r in receivers if s[0] < r[0]]
    for sender, receiver in pairs:
        requests.append(composition.CompositionRequest("K", (sender,), (receiver,), composition.DEFAULT_DRAWS, 0))
    weights = measure_weights(loaded, CaptureRequest(extras=frozenset(requests)))
    measured[""] = weights
    out = []
    if pairs:
        table = {}
        for request in requests[1:]:
            table.update(weights.extras[request])
        out.append(composition.findings(table, settings.max_heads, settings.keep, used))
    out.append(ov_copying.findings(weights.extras[requests[0]], settings.max_heads, settings.keep, used))
    return out


def check_discovered(spec: SpecFile, measured: dict[str, Any]) -> None:
    """Every written expectation must hold on the measurements it was derived from."""
    from interp_assert.errors import InternalError
    from interp_assert.properties import CheckContext

    for entry in spec.entries:
        assert entry.expectation is not None
        outcome = entry.expectation.check(CheckContext(measured[entry.expectation.prompts]))
        if not outcome.passed:
            raise InternalError(f"internal error: discovered {entry.name!r} does not hold: {outcome.headline}")


def spec_model_reference(model: str, output: Path) -> str:
    """``model`` as given; a relative path is rewritten relative to the spec's folder, where it is resolved."""
    from interp_assert.measure.loading.models import ALIASES

    path = Path(model).expanduser()
    if model in ALIASES or path.is_absolute() or not path.exists():
        return model
    return os.path.relpath(path.resolve(), output.resolve().parent)


# ---- YAML text: written by hand so it keeps its comments and order ----


def render(
    model: str,
    loaded: Any,
    header: dict[str, str],
    prompt_sets: dict[str, PromptSet],
    sections: list[Section],
    settings: DiscoverSettings,
) -> str:
    from interp_assert.version import package_version

    config = loaded.config
    shape = f"{config.num_hidden_layers} layers x {config.num_attention_heads} heads"
    kv_heads = getattr(config, "num_key_value_heads", None)
    if kv_heads and kv_heads != config.num_attention_heads:
        shape += f" ({kv_heads} KV heads)"
    where = header.get("device") or f"device_map {header['device_map']}"
    lines = [
        f"# Discovered by `interp-assert discover {model}` (interp_assert {package_version()}).",
        f"# {type(loaded.model).__name__}: {shape}, {header['dtype']} on {where}.",
        f"# A head is written when its role score reaches {settings.threshold:g}; each at_least bound is",
        f"# {settings.keep:g} x the measured value, rounded down (at_most: divided by {settings.keep:g}, rounded up).",
        "# Each description carries the measured number; edit the bounds as findings firm up.",
        *(f"{key}: {_scalar(value)}" for key, value in header.items()),
        "",
        "prompts:",
    ]
    for name, prompt_set in prompt_sets.items():
        lines += [f"  {name}:", f"    bos: {prompt_set.bos}"]
        if prompt_set.texts is not None:
            lines.append("    texts:")
            lines += [f"      - {json.dumps(text, ensure_ascii=False)}" for text in prompt_set.texts]
        elif prompt_set.pair_template is not None:
            lines.append("    pair_template:")
            template = prompt_set.pair_template.model_dump()
            lines += [f"      {key}: {_scalar(value)}" for key, value in template.items() if value or key == "texts"]
        elif prompt_set.pairs is not None:
            lines.append("    pairs:")
            lines += [f"      - {_scalar(pair.model_dump())}" for pair in prompt_set.pairs]
        else:
            assert prompt_set.random_tokens is not None
            random = prompt_set.random_tokens
            lines.append(
                f"    random_tokens: {{length: {random.length}, repeats: {random.repeats}, "
                f"count: {random.count}, seed: {random.seed}}}"
            )
        if prompt_set.generate:
            lines.append(f"    generate: {prompt_set.generate}")
    lines += ["", "expectations:"]
    for section in sections:
        if not section.expectations and not section.notes:
            continue
        lines.append(f"  # ---- {section.title} ----")
        lines += [f"  # {note}" for note in section.notes]
        for expectation in section.expectations:
            for index, (key, value) in enumerate(expectation.items()):
                lines.append(f"  {'- ' if index == 0 else '  '}{key}: {_scalar(value)}")
            lines.append("")
        if not section.expectations:
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _scalar(value: Any) -> str:
    """One YAML value on one line; a string is left plain only when it reads back as itself."""
    from interp_assert.spec.yamlsource import load_source

    if isinstance(value, list):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_scalar(item)}" for key, item in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # shortest text that reads back as the same number
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z0-9_./\-][^:#'\"{}\[\],&*!|>%@`]*", text) and not text.endswith(" ")
    if plain and load_source(f"v: {text}", "<value>").data == {"v": text}:
        return text
    return json.dumps(text, ensure_ascii=False)
