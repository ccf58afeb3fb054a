"""The exception hierarchy: one root, small documented subclasses.

Every error a user can cause by what they wrote or passed is an
:class:`InterpAssertError`; its ``str`` is a complete, one-paragraph message
that names the file, line and column or the offending value and says what
would be valid.  Nothing below this module raises a bare library exception at
a user.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a spec file (1-based line and column, as editors show)."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class InterpAssertError(Exception):
    """Root of every error interp_assert raises on purpose."""


class SpecError(InterpAssertError):
    """A spec file is invalid. Carries every problem found, each with its location."""

    def __init__(self, problems: list[tuple[Location | None, str]]) -> None:
        self.problems = problems
        super().__init__(self._render())

    def _render(self) -> str:
        lines = []
        for location, message in self.problems:
            lines.append(f"{location}: {message}" if location else message)
        return "\n".join(lines)


class SpecSyntaxError(SpecError):
    """The file is not YAML at all (or repeats a key); the whole file is rejected."""


class UsageError(InterpAssertError):
    """The command line is wrong: a flag's value, or flags that exclude each other (pytest shows it
    as a usage error; ``interp-assert`` exits 2)."""


class InfrastructureError(InterpAssertError):
    """What the run needs is not there: a model, adapter or SAE that cannot be found or loaded, a
    device this machine lacks, memory that ran out. Not a verdict on the model: ``interp-assert``
    exits 69 (see :mod:`interp_assert.exit_codes`) and pytest reports a setup error."""


class ModelLoadError(InfrastructureError):
    """A model could not be found or loaded (offline, unsafe format, bad path)."""


class ResourceError(InfrastructureError):
    """The machine ran out of something while measuring: memory (CPU or accelerator), disk."""


class CheckpointError(InterpAssertError):
    """A checkpoint cannot be tracked: missing, matched by nothing, a repeated step, another architecture."""


class CaptureError(InterpAssertError):
    """The model's internals could not be captured or failed validation."""


class PromptError(InterpAssertError):
    """A prompt set cannot be built for this model (too long for its context, no BOS token);
    the caller adds the prompt set's location."""


class CheckInputError(InterpAssertError):
    """An expectation names something the model does not have (a head, layer or index out of
    range); the caller adds the expectation's location."""


class SnapshotFileError(InterpAssertError):
    """A snapshot file exists but cannot be read, or cannot be written."""


class UnsafePathError(InterpAssertError):
    """A folder or file interp_assert would load from (a cache, the native kernel, a signing key)
    could be written by another user, or does not carry this user's signature."""


class InternalError(InterpAssertError):
    """An invariant of interp_assert itself broke: a bug to report, not something the user wrote."""


class PropertyPluginError(InterpAssertError):
    """An installed property plug-in is broken (not importable, not an Expectation, a clashing tag)."""


class SaeLoadError(InterpAssertError):
    """A sparse autoencoder (or a stored direction) cannot be used: a missing or unreadable file, a
    missing, mis-shaped or non-finite tensor, an unknown activation or format, a width or hook
    point the model does not have."""
