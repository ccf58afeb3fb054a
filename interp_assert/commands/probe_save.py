"""``interp-assert probe save SPEC.yaml NAME -o FILE.safetensors``: store a probe's direction.

The direction of the spec's ``probe`` expectation NAME (difference in means over every prompt
of both sets, at its layer and position) is measured on the spec's model (or ``--model``) and
written to FILE under the expectation's ``key`` (default: its name), beside any other tensors
the file already holds. The file's metadata records the model, the layer, position and sets.
The spec then asserts ``cosine_at_least`` against it (``direction: FILE``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from interp_assert.errors import InterpAssertError
from interp_assert.measure.loading.models import content_hash, load_model
from interp_assert.properties.probe import Probe
from interp_assert.properties.representation import save_directions
from interp_assert.run_options import RunOptions
from interp_assert.runner import measure_named, model_key
from interp_assert.spec import load_spec


def save(
    spec_path: Path, name: str, output: Path, options: RunOptions, model: str | None = None, *, force: bool = False
) -> str:
    spec = load_spec(spec_path)
    entry = next((e for e in spec.entries if e.name == name), None)
    if entry is None:
        names = ", ".join(e.name for e in spec.entries if isinstance(e.expectation, Probe)) or "none"
        raise InterpAssertError(f"{spec_path}: no expectation named {name!r}; its probe expectations: {names}")
    if entry.problems or not isinstance(entry.expectation, Probe) or spec.header is None:
        why = "; ".join(message for _, message in entry.problems) or "it is not a probe expectation"
        raise InterpAssertError(f"{spec_path}:{entry.location.line}: {name}: {why}")
    probe = entry.expectation
    reference, load = model_key(spec, options)
    loaded = load_model(model or reference, load)
    request = probe.request()
    measurements = measure_named(loaded, probe.prompts, spec.header.prompts[probe.prompts], probe.requirements())
    found = measurements.extras[request]
    if "error" in found:
        raise InterpAssertError(f"{name}: {found['error']}")
    vectors: dict[str, np.ndarray] = {}
    metadata: dict[str, str] = {}
    if output.exists():
        from safetensors import safe_open

        with safe_open(str(output), "np") as existing:
            vectors = {name: existing.get_tensor(name) for name in existing.keys()}  # noqa: SIM118
            metadata = dict(existing.metadata() or {})
    key = probe.key or probe.name
    if key in vectors and not force:  # a stored direction is a reference, like a snapshot
        raise InterpAssertError(f"{output} already holds a direction {key!r}; pass --force to replace it")
    vectors[key] = np.asarray(found["direction"])
    metadata |= {
        f"{key}.model": str(model or reference),
        f"{key}.content_hash": content_hash(loaded.source),
        f"{key}.probe": f"layer {probe.layer}, position {probe.position}, {probe.prompts} minus {probe.negative}",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    save_directions(output, vectors, metadata)
    return f"wrote {output}: {key} ({len(vectors[key])} wide, held-out AUROC {found['auroc']:.4f})"
