"""Runs spec expectations: loads each model once, captures once per prompt set, evaluates.

Shared by the pytest plugin and the command line. Models are kept one at a
time (the plugin orders items so no model is loaded twice); measurements are
kept for the session.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from interp_assert.errors import (
    CheckInputError,
    CheckpointError,
    InfrastructureError,
    InterpAssertError,
    ModelLoadError,
    PromptError,
    SpecError,
)
from interp_assert.evaluation import Evaluation, ModelIdentity
from interp_assert.measure.capture import attribution
from interp_assert.measure.capture.prompts import PromptBatch, build_batches
from interp_assert.measure.capture.run import generate, max_positions, measure
from interp_assert.measure.loading.architecture import model_map
from interp_assert.measure.loading.checkpoints import Checkpoint
from interp_assert.measure.loading.models import LoadedModel, LoadOptions, environment, load_model
from interp_assert.measure.loading.placement import check_device_map, check_max_memory
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.measure.prompt_sets import limited
from interp_assert.outcome import Outcome
from interp_assert.properties import CheckContext
from interp_assert.result_cache import ResultCache, model_identity, outcome_key
from interp_assert.run_options import RunOptions
from interp_assert.spec import Entry, PromptSet, SpecFile
from interp_assert.vocab import TargetRole, parse_head


def model_key(spec: SpecFile, options: RunOptions) -> tuple[str, LoadOptions]:
    """Which model a spec runs on and how it is loaded, after ``--interp-model`` / ``--interp-revision``
    overrides and the device, dtype and placement options (the command line wins over the spec).

    A spec's ``revision`` pins the spec's own model: it does not follow an ``--interp-model``
    replacement, which ``--interp-revision NAME=REV`` pins instead. A spec's ``device_map``,
    ``max_memory`` and ``offload_folder`` go together; ``--interp-device`` replaces them all."""
    header = spec.header
    assert header is not None
    reference = options.overrides.get(header.model, header.model)
    if reference == header.model and not Path(reference).is_absolute():
        candidate = Path(spec.path).parent / reference
        reference = str(candidate.resolve()) if candidate.exists() else reference
    device_map, max_memory, offload = None, None, None
    if header.device_map is not None:
        device_map = check_device_map(header.device_map)
        max_memory = check_max_memory(header.max_memory) if header.max_memory else None
        if header.offload_folder is not None:
            offload = (Path(spec.path).parent / Path(header.offload_folder).expanduser()).resolve()
    load = options.load_options(
        header.model,
        device=header.device,
        dtype=header.dtype,
        revision=header.revision,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload,
    )
    return reference, load


class Runner:
    def __init__(self, options: RunOptions, *, teacher: Runner | None = None) -> None:
        """``teacher``: in an audit, the base's runner. A prompt set that generates is then measured
        here on the teacher's continuation (teacher-forced), so both models are compared on the
        same tokens; ``generated_text`` still reads this model's own continuation."""
        self.options = options
        self.teacher = teacher
        # (model, prompt set) -> the token batches its measurements read
        self._tokens: dict[tuple[object, ...], list[PromptBatch]] = {}
        self._model: tuple[tuple[str, LoadOptions], LoadedModel] | None = None
        self._measurements: dict[tuple[object, ...], Measurements] = {}
        self._extra: dict[tuple[str, str], CaptureRequest] = {}
        self._unloadable: dict[tuple[str, LoadOptions], ModelLoadError] = {}
        self._results: ResultCache | None = None  # --interp-cache, opened on first use
        # (spec path, expectation name) answered from the cache -> the record of the model it was measured on
        self.cached: dict[tuple[str, str], dict[str, str]] = {}
        self._keys: dict[tuple[str, str], str | None] = {}

    def model_for(self, spec: SpecFile) -> LoadedModel:
        key = model_key(spec, self.options)
        if key in self._unloadable:
            raise self._unloadable[key]  # tried once this session already; do not retry per item
        if self._model is None or self._model[0] != key:
            self._model = None  # release the previous model before loading the next
            reference, load = key
            try:
                self._model = (key, load_model(reference, load, Path(spec.path).parent))
            except ModelLoadError as exc:
                self._unloadable[key] = exc
                raise
        return self._model[1]

    def release(self) -> None:
        """Drop the loaded model (measurements are kept): another runner is about to load one."""
        self._model = None

    def context(self, spec: SpecFile, prompt_name: str) -> CheckContext:
        """What a property's check sees: the prompt set's measurements and, for snapshots, the
        spec's file, its spec-wide tolerances and the run's environment."""
        assert spec.header is not None
        loaded = self.model_for(spec)
        # The model as the user named it (the spec's, or the override's): never a machine-specific path.
        return CheckContext(
            measurements=self.measurements(spec, prompt_name),
            spec_path=spec.path,
            snapshot_tolerance=spec.header.snapshot_tolerance,
            environment=environment(loaded) | {"model": self.model_named(spec)},
            update_snapshots=self.options.update_snapshots,
        )

    def evaluation(self, spec: SpecFile, entry: Entry, *, checkpoint: Checkpoint | None = None) -> Evaluation:
        """``entry`` checked on this runner's model, as the record every front-end renders. An error
        that is about the expectation on this model (a head it lacks, a prompt it cannot tokenise) is
        recorded, with the exception kept in ``problem``; a failure of the machine or of the model's
        files (:class:`InfrastructureError`, :class:`CheckpointError`, :class:`ModelLoadError`) raises."""
        assert entry.expectation is not None
        expectation = entry.expectation
        low, high = expectation.bounds()
        base = Evaluation(
            spec.path, entry.name, expectation.property, expectation.prompts, ModelIdentity(self.model_named(spec))
        )
        base = replace(base, bound_low=low, bound_high=high)
        try:
            outcome = self.evaluate(spec, entry)
        except (InfrastructureError, CheckpointError, ModelLoadError):
            raise
        except InterpAssertError as exc:
            return replace(
                base,
                model=self.identity(spec, entry, checkpoint),
                state="error",
                error=str(exc).replace("\n", "; "),
                problem=exc,
            )
        return replace(
            base, model=self.identity(spec, entry, checkpoint), outcome=outcome, cached=self.was_cached(spec, entry)
        )

    def identity(
        self, spec: SpecFile, entry: Entry | None = None, checkpoint: Checkpoint | None = None
    ) -> ModelIdentity:
        """The model this runner measures ``spec`` on: for an ``entry`` answered by the result cache,
        the record stored with it (nothing is loaded for it)."""
        record = self.cached.get((spec.path, entry.name)) if entry is not None else None
        if record is None:
            try:
                record = model_record(self.model_for(spec))
            except ModelLoadError:
                record = {}
        found_identity = ModelIdentity.from_record(self.model_named(spec), record)
        if checkpoint is not None:
            found_identity = replace(found_identity, checkpoint=checkpoint.label, step=checkpoint.step)
        return found_identity

    def evaluate(self, spec: SpecFile, entry: Entry) -> Outcome:
        """Evaluate one valid entry. Raises :class:`SpecError` (with the entry's location) for a
        head, layer or prompt the model cannot have."""
        assert spec.header is not None and entry.expectation is not None
        hit = self.cached_outcome(spec, entry)
        if hit is not None:
            return hit
        outcome = self._evaluate(spec, entry)
        key = self._cache_key(spec, entry)
        if key is not None and self._results is not None:
            loaded = self.model_for(spec)
            self._results.put(key, outcome, model_record(loaded))
        return outcome

    def cached_outcome(self, spec: SpecFile, entry: Entry) -> Outcome | None:
        """The outcome ``--interp-cache`` holds for ``entry``, found without loading the model, or ``None``."""
        key = self._cache_key(spec, entry)
        if key is None or self._results is None:
            return None
        found = self._results.get(key)
        if found is None:
            return None
        outcome, model = found
        self.cached[(spec.path, entry.name)] = model
        return outcome

    def was_cached(self, spec: SpecFile, entry: Entry) -> bool:
        return (spec.path, entry.name) in self.cached

    def _cache_key(self, spec: SpecFile, entry: Entry) -> str | None:
        """The result cache's key for ``entry``, or ``None`` when there is no cache (or this is not cached:
        a snapshot update writes, and a model without a hash of its own cannot be told from another)."""
        if self.options.cache is None or self.options.update_snapshots or entry.expectation is None:
            return None
        memo = (spec.path, entry.name)
        if memo not in self._keys:
            if self._results is None:
                self._results = ResultCache(self.options.cache)
            assert spec.header is not None
            reference, load = model_key(spec, self.options)
            identity = model_identity(reference, load, Path(spec.path).parent, self._results.hashes)
            name = entry.expectation.prompts
            prompt_json = "" if not name else limited(spec.header.prompts[name], self.options.limit).model_dump_json()
            key = None if identity is None else outcome_key(identity, spec, entry, prompt_json)
            self._keys[memo] = key
        return self._keys[memo]

    def _evaluate(self, spec: SpecFile, entry: Entry) -> Outcome:
        assert spec.header is not None and entry.expectation is not None
        expectation = entry.expectation
        try:
            outcome = expectation.evaluate(self.context(spec, expectation.prompts))
        except CheckInputError as exc:
            model = self.model_named(spec)
            raise SpecError([(entry.location, f"{entry.name}: {exc} (model {model!r})")]) from None
        role = expectation.flagged_role()
        if not outcome.passed and outcome.heads and role is not None:
            flag = self.token_flag(spec, expectation.prompts, outcome.heads[0], role)
            if flag:
                outcome = replace(outcome, details=(*outcome.details, f"flag: {flag}"))
        return outcome

    def token_flag(self, spec: SpecFile, prompt_name: str, head: str, role: TargetRole) -> str:
        """A line when ``head``'s ``role`` score comes mostly from one frequent query token, else ''.
        Costs one capture of the head's pattern (first sequence), so it is asked on failures only."""
        layer, index = parse_head(head)
        measured = self.measure_only(spec, prompt_name, CaptureRequest(patterns=frozenset({(layer, index)})))
        pattern = measured.patterns.get((layer, index))
        if pattern is None:
            return ""
        rows = attribution.row_scores(pattern, measured.pattern_tokens, role)
        found = attribution.dominant_token(rows, measured.pattern_tokens)
        return attribution.describe(head, role, found) if found else ""

    def model_named(self, spec: SpecFile) -> str:
        """The model reference this run measures for ``spec``: the override's when one applies."""
        assert spec.header is not None
        return self.options.overrides.get(spec.header.model, spec.header.model)

    def overridden(self, spec: SpecFile) -> bool:
        return spec.header is not None and spec.header.model in self.options.overrides

    def also_capture(self, spec: SpecFile, prompt_name: str, request: CaptureRequest) -> None:
        """Widen what the next capture of ``prompt_name`` computes (pictures: patterns, labels),
        so evaluation and figures share one pass."""
        key = (spec.path, prompt_name)
        self._extra[key] = self._extra.get(key, CaptureRequest()) | request

    def measure_only(self, spec: SpecFile, prompt_name: str, request: CaptureRequest) -> Measurements:
        """``request`` alone on ``prompt_name`` (kept for the session): a failure's diagnostics must not
        repeat the spec's whole capture (its ablations, lens, ...) for one head's pattern."""
        assert spec.header is not None
        loaded = self.model_for(spec)
        prompt_set = spec.header.prompts[prompt_name]
        key = (model_key(spec, self.options), prompt_set.model_dump_json(), request)
        if key not in self._measurements:
            if self.teacher is not None and prompt_set.generate:
                self._measurements[key] = measure(loaded, self.teacher.tokens(spec, prompt_name), request)
            else:
                self._measurements[key] = measure_prompt_set(loaded, prompt_set, request)
        return self._measurements[key]

    def measurements(self, spec: SpecFile, prompt_name: str) -> Measurements:
        assert spec.header is not None
        loaded = self.model_for(spec)
        weights_request = _spec_request(spec, prompt_name) | self._extra.get((spec.path, prompt_name), CaptureRequest())
        if reads_weights_only(weights_request):  # no prompts, no tokeniser, no forward pass
            key = (model_key(spec, self.options), "", weights_request)
            if key not in self._measurements:
                self._measurements[key] = measure_weights(loaded, weights_request)
            return self._measurements[key]
        request = _spec_request(spec, prompt_name) | self._extra.get((spec.path, prompt_name), CaptureRequest())
        prompt_set = limited(spec.header.prompts[prompt_name], self.options.limit)
        key = (model_key(spec, self.options), prompt_set.model_dump_json(), request)
        if key not in self._measurements:
            forced = self.teacher.tokens(spec, prompt_name) if self.teacher and prompt_set.generate else None
            try:
                batches, texts = prompt_batches(loaded, prompt_set)
            except PromptError as exc:
                where = spec.prompt_locations.get(prompt_name)
                raise SpecError([(where, f"prompt set {prompt_name!r}: {exc}")]) from None
            self._tokens[key[:2]] = forced or batches
            self._measurements[key] = replace(measure(loaded, forced or batches, request), generated_texts=texts)
        return self._measurements[key]

    def tokens(self, spec: SpecFile, prompt_name: str) -> list[PromptBatch]:
        """The token batches this runner measured ``prompt_name`` on (its own continuation, if it generates)."""
        assert spec.header is not None
        self.measurements(spec, prompt_name)
        return self._tokens[(model_key(spec, self.options), spec.header.prompts[prompt_name].model_dump_json())]


def model_record(loaded: LoadedModel) -> dict[str, str]:
    """Where a model came from, as the JUnit record names it (kept beside a cached outcome)."""
    from interp_assert.measure.loading.models import content_hash

    record = {"model_source": loaded.source, "weights_sha256": content_hash(loaded.source)}
    if loaded.options.revision is not None:
        record["revision"] = loaded.options.revision
    if loaded.commit is not None:
        record["commit"] = loaded.commit
    return record


def measure_prompt_set(loaded: LoadedModel, prompt_set: PromptSet, request: CaptureRequest) -> Measurements:
    """Tokenise a prompt set, continue it greedily if it asks to ``generate``, and measure it.
    Raises :class:`PromptError` when the set cannot be built for this model."""
    batches, texts = prompt_batches(loaded, prompt_set)
    return replace(measure(loaded, batches, request), generated_texts=texts)


def prompt_batches(loaded: LoadedModel, prompt_set: PromptSet) -> tuple[list[PromptBatch], tuple[str, ...]]:
    """The set's token batches (with the model's greedy continuation if it generates) and the
    continuations decoded. Raises :class:`PromptError` when the set cannot be built for this model."""
    batches = build_batches(
        prompt_set,
        loaded.tokenizer,
        vocab_size=int(loaded.config.vocab_size),
        max_positions=max_positions(loaded),
        extra_tokens=prompt_set.generate,
    )
    texts: tuple[str, ...] = ()
    if prompt_set.generate:
        prompt_lengths = [batch.tokens.shape[1] for batch in batches]
        batches = generate(loaded, batches, prompt_set.generate)
        texts = tuple(
            loaded.tokenizer.decode(row[start:], skip_special_tokens=True)
            for batch, start in zip(batches, prompt_lengths, strict=True)
            for row in batch.tokens.tolist()
        )
    return batches, texts


def reads_weights_only(request: CaptureRequest) -> bool:
    """True when every measurement asked for reads the weights only (composition, copying scores)."""
    return (
        bool(request.extras)
        and request == CaptureRequest(extras=request.extras)
        and all(getattr(extra, "weights_only", False) for extra in request.extras)
    )


def measure_weights(loaded: LoadedModel, request: CaptureRequest) -> Measurements:
    """The weight-only measurements of ``request``: no prompt is tokenised and the model never runs."""
    mm = model_map(loaded.model)
    return Measurements(
        n_layers=mm.n_layers, n_heads=mm.n_heads, extras={extra: extra.run(loaded, []) for extra in request.extras}
    )


def measure_named(loaded: LoadedModel, name: str, prompt_set: PromptSet, request: CaptureRequest) -> Measurements:
    """:func:`measure_prompt_set`, with a prompt set that cannot be built named in the error."""
    try:
        return measure_prompt_set(loaded, prompt_set, request)
    except PromptError as exc:
        raise InterpAssertError(f"prompt set {name!r}: {exc}") from None


def _spec_request(spec: SpecFile, prompt_name: str) -> CaptureRequest:
    """Everything any valid expectation of ``spec`` needs from ``prompt_name``: one capture serves all."""
    request = CaptureRequest()
    for entry in spec.entries:
        if entry.expectation is not None and entry.expectation.prompts == prompt_name:
            request = request | entry.expectation.requirements()
    return request
