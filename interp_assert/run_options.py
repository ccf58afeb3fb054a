"""A run's options: what the command line (pytest's ``--interp-*`` flags, or an ``interp-assert``
verb's) says about loading models, in one place.

:class:`RunOptions` holds the run-wide :class:`~interp_assert.measure.loading.models.LoadOptions` (trust, pickles,
the ``--interp-model`` and ``--interp-revision`` maps) and the settings that replace a spec's own
(device, dtype, placement). :func:`from_flags` is the one function that turns flags into
options, for the pytest plugin and every command alike; :meth:`RunOptions.load_options` is the one
place a model's :class:`LoadOptions` are put together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from interp_assert.errors import UsageError
from interp_assert.measure.loading import placement
from interp_assert.measure.loading.hub import revision_problem
from interp_assert.measure.loading.models import LoadOptions
from interp_assert.measure.loading.placement import DeviceMap, MaxMemory
from interp_assert.vocab import DType


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    load: LoadOptions = field(default_factory=LoadOptions)  # run-wide: trust, pickles, the model and revision maps
    # given on the command line: each replaces what a spec (or a call) says
    device: str | None = None
    dtype: DType | None = None
    device_map: DeviceMap | None = None  # wins over the spec's device and device_map
    max_memory: MaxMemory | None = None
    offload_folder: Path | None = None
    update_snapshots: bool = False
    limit: int | None = None  # --interp-limit: a smoke run measures the first N prompts of each set
    cache: Path | None = None  # --interp-cache: the result cache's folder (None: no cache)

    @property
    def smoke(self) -> str:
        """``smoke run: N prompts per set`` under ``--interp-limit``, else ``""``: said on every output."""
        return f"smoke run: {self.limit} prompts per set" if self.limit is not None else ""

    @property
    def overrides(self) -> dict[str, str]:
        """``--interp-model NAME=TARGET``: the model to load wherever ``NAME`` is named."""
        return dict(self.load.overrides)

    @property
    def revisions(self) -> dict[str, str]:
        """``--interp-revision NAME=REV``."""
        return dict(self.load.revisions)

    def replacing(self, name: str, target: str) -> RunOptions:
        """These options, with the model named ``name`` replaced by ``target`` (audit, track, report)."""
        overrides = self.overrides | {name: target}
        return replace(self, load=replace(self.load, overrides=tuple(sorted(overrides.items()))))

    def revising(self, name: str, revision: str | None) -> RunOptions:
        """These options, with the model named ``name`` pinned at ``revision`` (or at none)."""
        revisions = {key: value for key, value in self.revisions.items() if key != name}
        revisions |= {name: revision} if revision is not None else {}
        return replace(self, load=replace(self.load, revisions=tuple(sorted(revisions.items()))))

    def load_options(
        self,
        name: str,
        *,
        device: str | None = None,
        dtype: DType | None = None,
        revision: str | None = None,
        device_map: DeviceMap | None = None,
        max_memory: MaxMemory | None = None,
        offload_folder: Path | None = None,
    ) -> LoadOptions:
        """How to load the model named ``name``, given what its spec (or caller) says; the command
        line wins. A placement (``device_map`` with its ``max_memory`` and ``offload_folder``) goes
        as a whole: a command-line device or device map replaces the spec's. ``revision`` pins the
        named model only: it does not follow an ``--interp-model`` replacement."""
        if self.device is not None or self.device_map is not None:
            device_map, max_memory, offload_folder = None, None, None
        pinned = self.revisions.get(name)
        if pinned is None and name not in self.overrides:
            pinned = revision
        return replace(
            self.load,
            device=self.device or device or "cpu",
            dtype=self.dtype or dtype or "float32",
            revision=pinned,
            device_map=self.device_map or device_map,
            max_memory=self.max_memory or max_memory,
            offload_folder=self.offload_folder or offload_folder,
        )


@dataclass(frozen=True, kw_only=True)
class Flags:
    """The model flags as typed, on pytest's command line or ini file or an ``interp-assert`` verb's."""

    models: Sequence[str] = ()  # NAME=PATH_OR_ID
    revisions: Sequence[str] = ()  # NAME=REV
    device: str | None = None
    dtype: DType | None = None
    device_map: str | None = None
    max_memory: str | None = None
    offload_folder: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    update_snapshots: bool = False
    limit: str | int | None = None  # --interp-limit N
    cache: bool = False  # --interp-cache


def from_flags(flags: Flags, *, here: Path) -> RunOptions:
    """Check the flags and turn them into options; :class:`UsageError` names the flag and value.
    ``here``: the folder relative paths are taken from (where the command was run)."""
    overrides = _pairs(
        flags.models, "--interp-model", "SPEC_MODEL=PATH_OR_ID", "a model can be replaced by one checkpoint per run"
    )
    revisions = _pairs(
        flags.revisions, "--interp-revision", "SPEC_MODEL=REVISION", "a model is measured at one revision per run"
    )
    for name, revision in revisions.items():
        problem = revision_problem(revision)
        if problem:
            raise UsageError(f"--interp-revision {name}={revision}: {problem}")
    if flags.device is not None and flags.device_map is not None:
        raise UsageError(
            f"--interp-device {flags.device} and --interp-device-map {flags.device_map}: give one device, "
            "or a device map, not both"
        )
    try:
        device_map = placement.parse_device_map_flag(flags.device_map) if flags.device_map is not None else None
    except ValueError as exc:
        raise UsageError(f"--interp-device-map {flags.device_map}: {exc}") from None
    try:
        max_memory = placement.parse_max_memory_flag(flags.max_memory) if flags.max_memory is not None else None
    except ValueError as exc:
        raise UsageError(f"--interp-max-memory {flags.max_memory}: {exc}") from None
    folder = None
    if flags.offload_folder is not None:
        try:
            folder = placement.check_offload_folder(here / Path(flags.offload_folder).expanduser()).resolve()
        except ValueError as exc:
            raise UsageError(f"--interp-offload-folder {flags.offload_folder}: {exc}") from None
    limit = _limit(flags.limit)
    if limit is not None and flags.update_snapshots:
        raise UsageError(
            f"--interp-limit {limit} with --snapshot-update would store a smoke run's numbers as the spec's "
            "snapshots; a smoke run never writes snapshots (drop one of the two)"
        )
    load = LoadOptions(
        trust_remote_code=flags.trust_remote_code,
        allow_pickle=flags.allow_pickle,
        overrides=tuple(sorted(overrides.items())),
        revisions=tuple(sorted(revisions.items())),
    )
    return RunOptions(
        load=load,
        device=flags.device,
        dtype=flags.dtype,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=folder,
        update_snapshots=flags.update_snapshots,
        limit=limit,
        cache=result_cache_folder() if flags.cache else None,
    )


def _limit(given: str | int | None) -> int | None:
    if given is None or given == "":
        return None
    text = str(given).strip()
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--interp-limit {given!r}: give a whole number of prompts per set, at least 1 (e.g. 2)")
    return int(text)


def result_cache_folder() -> Path:
    """Where ``--interp-cache`` keeps results: ``INTERP_ASSERT_RESULT_CACHE`` if set, else ``results/``
    under the cache folder (``INTERP_ASSERT_CACHE``, default ``~/.cache/interp_assert``)."""
    import os

    from interp_assert.measure.loading.models import cache_root

    given = os.environ.get("INTERP_ASSERT_RESULT_CACHE")
    return Path(given).expanduser() if given else cache_root(LoadOptions()) / "results"


def _pairs(items: Sequence[str], flag: str, form: str, once: str) -> dict[str, str]:
    """``NAME=VALUE`` entries, each name at most once."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} {item!r}: expected {form}")
        if key in pairs:
            raise UsageError(f"{flag} {key} is given twice ({pairs[key]!r} and {value!r}); {once}")
        pairs[key] = value
    return pairs
