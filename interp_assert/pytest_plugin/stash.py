"""Keys under which the plugin's hooks and spec items share session state (``config.stash``)."""

from __future__ import annotations

from typing import Any

import pytest

STALE_KEY = pytest.StashKey[list[str]]()  # stale-snapshot lines for the terminal summary
NOTES_KEY = pytest.StashKey[list[str]]()  # notes said even on a pass (loosened tolerances, other model)
WRITTEN_KEY = pytest.StashKey[list[tuple[str, str]]]()  # (written | updated | deleted, file) per snapshot
RUNNER_KEY = pytest.StashKey[Any]()  # the session's Runner, built on first use
RAN_SPECS_KEY = pytest.StashKey[dict[str, Any]]()  # spec path -> SpecFile, for specs at least one item ran
CHECKPOINTS_KEY = pytest.StashKey[tuple[Any, ...]]()  # --interp-checkpoints, resolved and ordered
CHECKPOINT_RUNNERS_KEY = pytest.StashKey[dict[tuple[str, str], Any]]()  # (spec model, checkpoint) -> Runner
GATE_TRACKS_KEY = pytest.StashKey[dict[str, Any]]()  # spec path -> its Track over --interp-checkpoints (gates)
