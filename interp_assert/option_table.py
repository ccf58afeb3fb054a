"""Every model and run option, declared once: the pytest flag ``--interp-<name>``, its ini key
``interp_<name>`` and, for those with a ``field``, the ``interp-assert`` verbs' flag (both
spellings, ``--dtype`` and ``--interp-dtype``), all with one help text. :mod:`interp_assert.pytest_plugin.options`
and :mod:`interp_assert.commands.cli` build their parsers from :data:`OPTIONS`; a new load option
is one entry here and one field of :class:`interp_assert.run_options.Flags`. Pure data: no pytest,
no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["append", "choice", "text", "flag"]


@dataclass(frozen=True, kw_only=True)
class Option:
    name: str  # the ini key; the flag is --interp-<name with dashes>
    kind: Kind
    help: str
    choices: tuple[str, ...] = ()
    default: Any = None
    metavar: str | None = None
    # Model and run options shared with the interp-assert verbs: the run_options.Flags field the
    # value fills, and the verbs' short spelling beside --interp-<name> (None: pytest only).
    field: str | None = None
    short: str | None = None
    verbs: bool = False  # the interp-assert verbs take it too (their "model loading" group)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        name="interp_model",
        verbs=True,
        field="models",
        kind="append",
        metavar="SPEC_MODEL=PATH_OR_ID",
        help="run specs (and adapters) whose model is SPEC_MODEL against PATH_OR_ID instead (repeatable); "
        "SPEC_MODEL must be a model some collected spec or adapter names",
    ),
    Option(
        name="interp_revision",
        verbs=True,
        field="revisions",
        kind="append",
        metavar="SPEC_MODEL=REVISION",
        help="load the hub model SPEC_MODEL (or its --interp-model replacement) at REVISION: a branch, tag or "
        "commit sha (repeatable); wins over the spec's revision",
    ),
    Option(
        name="interp_missing",
        kind="choice",
        choices=("error", "skip"),
        default="error",
        help="what to do when a spec's model cannot be loaded: error (default) or skip with the reason",
    ),
    Option(
        name="interp_device",
        verbs=True,
        field="device",
        short="--device",
        kind="text",
        help="device for every spec's model, e.g. cpu or cuda (overrides the spec)",
    ),
    Option(
        name="interp_dtype",
        verbs=True,
        field="dtype",
        short="--dtype",
        kind="choice",
        choices=("float32", "float16", "bfloat16"),
        help="dtype for every spec's model (overrides the spec)",
    ),
    Option(
        name="interp_device_map",
        verbs=True,
        field="device_map",
        short="--device-map",
        kind="text",
        metavar="MAP",
        help="spread every spec's model over devices with accelerate: auto, balanced, balanced_low_0, sequential, "
        "or MODULE=DEVICE,... (DEVICE: cpu, cuda:N, a GPU number, or disk); overrides the spec's device and device_map",
    ),
    Option(
        name="interp_max_memory",
        verbs=True,
        field="max_memory",
        short="--max-memory",
        kind="text",
        metavar="DEVICE=SIZE,...",
        help="memory a device map may use per device, e.g. 0=20GiB,cpu=60GiB (overrides the spec's max_memory)",
    ),
    Option(
        name="interp_offload_folder",
        verbs=True,
        field="offload_folder",
        short="--offload-folder",
        kind="text",
        metavar="DIR",
        help="folder for weights a device map offloads to disk (overrides the spec's offload_folder)",
    ),
    Option(
        name="interp_trust_remote_code",
        verbs=True,
        field="trust_remote_code",
        short="--trust-remote-code",
        kind="flag",
        help="allow models whose code lives in their repository (off by default: it runs arbitrary code)",
    ),
    Option(
        name="interp_allow_pickle",
        verbs=True,
        field="allow_pickle",
        short="--allow-pickle",
        kind="flag",
        help="allow pickled (.bin/.pt) weights; by default only safetensors load",
    ),
    Option(
        name="interp_artifacts",
        kind="text",
        metavar="DIR",
        help="for each failed expectation, write heatmaps of the head concerned into DIR and name them in the failure",
    ),
    Option(
        name="interp_allow_override_update",
        kind="flag",
        help="let --snapshot-update record snapshots while --interp-model replaces a spec's model "
        "(refused by default: it would store another model's numbers as the spec's own)",
    ),
    Option(
        name="interp_checkpoints",
        kind="append",
        metavar="PATH_OR_GLOB[,...]",
        help="run every spec item once per checkpoint, each in place of the spec's model: model folders, "
        "adapter folders or .gguf files, or globs such as 'run/checkpoint-*' (comma-separated; repeatable); "
        "ids end in [checkpoint-200]; with pytest-xdist use --dist loadgroup (one checkpoint per worker at a time)",
    ),
    Option(
        name="interp_checkpoint_order",
        kind="choice",
        choices=("step", "given"),
        default="step",
        help="order of --interp-checkpoints: step (default; the last integer in each folder name) or given",
    ),
    Option(
        name="interp_gate",
        kind="text",
        metavar="GATE",
        default="last",
        help="with --interp-checkpoints, one item per expectation that passes when: last (default) it holds on "
        "the last checkpoint; by:STEP it holds on every checkpoint from STEP on; never-breaks it forms and never "
        "fails later; each: one item per (expectation, checkpoint), each of which must hold",
    ),
    Option(
        name="interp_limit",
        field="limit",
        kind="text",
        metavar="N",
        help="smoke run: measure only the first N prompts of every prompt set; every summary line says so, "
        "snapshot expectations are skipped and --snapshot-update is refused",
    ),
    Option(
        name="interp_cache",
        field="cache",
        kind="flag",
        help="reuse results measured before under the same key (weights hash, expectation and prompt set, "
        "package/torch/transformers versions, device, dtype, attention path); stored under the cache folder",
    ),
    Option(
        name="interp_debug",
        verbs=True,
        field="debug",
        short="--debug",
        kind="flag",
        help="show Python tracebacks for interp_assert's own errors (hidden by default)",
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}


def flag_values(value_of: Callable[[Option], Any], *, verbs_only: bool = False) -> dict[str, Any]:
    """``Flags`` keyword arguments: each option's value as ``value_of`` reads it (``verbs_only``:
    the options the interp-assert verbs take; the others keep their defaults)."""
    return {
        option.field: value_of(option)
        for option in OPTIONS
        if option.field and option.field != "debug" and (option.verbs or not verbs_only)
    }
