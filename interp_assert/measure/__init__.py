"""Measuring a model, by trade.

- :mod:`~interp_assert.measure.loading`: finding, converting, placing and mapping models (no forward pass);
- :mod:`~interp_assert.measure.attention`: the attention paths, one protocol, chosen in one place;
- :mod:`~interp_assert.measure.capture`: prompts to token batches, the forward passes, scoring;
- :mod:`~interp_assert.measure.counterfactual`: ablation and activation patching (more forward passes);
- :mod:`~interp_assert.measure.weights`: scores read from the weights alone;
- :mod:`~interp_assert.measure.features`: SAEs, hook points and probes.

Forward passes run from ``capture``, ``counterfactual`` and ``features`` (each through a request that
:func:`interp_assert.measure.capture.run.measure` dispatches), never from loading. The modules at this
level (:mod:`~interp_assert.measure.measurements`, :mod:`~interp_assert.measure.head_tables`,
:mod:`~interp_assert.measure.prompt_sets`, :mod:`~interp_assert.measure.pair_requests`,
:mod:`~interp_assert.measure.probe_math`) are the data properties read: they import no torch."""
