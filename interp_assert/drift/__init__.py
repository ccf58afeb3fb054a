"""The pure snapshot layer: fingerprints, their drift summaries and the snapshot files.

Numbers in, numbers and files out: it imports nothing above :mod:`interp_assert.measure` (a test
checks every import, lazy ones too). The verbs that compare models (``audit``, ``track``) live in
:mod:`interp_assert.commands`."""
