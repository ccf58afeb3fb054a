"""Loading models and running them: prompts, capture (the only code that runs a model), scores.

The dataclasses properties depend on (:mod:`interp_assert.measure.measurements`,
:mod:`interp_assert.measure.head_tables`) import no torch; the rest do."""
