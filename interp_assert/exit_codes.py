"""Exit statuses of every ``interp-assert`` verb, in one table, and the one function that maps an
exception to its status. Nothing here imports torch.

A pipeline must tell "the model changed" from "the job broke" without parsing text:

====  ===============  ===========================================================================
code  name             meaning
====  ===============  ===========================================================================
0     HELD             every expectation held (track: on the last checkpoint)
1     FAILED           an expectation was measured and did not hold: the model changed
2     USAGE            the command line or a spec is wrong (bad flag, invalid spec, missing file,
                       a file that would be overwritten without --force)
3     INTERNAL         a bug in interp_assert or a library it uses (traceback with --debug)
69    INFRASTRUCTURE   what the run needs is not there: a model, adapter or checkpoint that cannot
                       be loaded, a device this machine lacks, memory or disk that ran out; a retry
                       elsewhere may pass, and nothing is known about the model
130   INTERRUPTED      Ctrl-C
====  ===============  ===========================================================================

Why these numbers: 1 for a failed expectation is what pytest uses for failed tests and what the
design fixes for ``audit`` (promptfoo's 100 would break every script written against it). 2 is
argparse's usage status, which the verbs already used for every user error. 3 is pytest's
internal error. 69 is ``EX_UNAVAILABLE`` from BSD's ``sysexits.h`` ("a service is unavailable, a
support program or file does not exist"): far from the small numbers pytest, argparse and shells
use (126/127: not executable/not found; 128+N: killed by signal N), so no other tool's status is
mistaken for it. When several apply, the most serious wins: INTERNAL > USAGE > INFRASTRUCTURE >
FAILED > HELD (:func:`worst`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from interp_assert.errors import (
    CaptureError,
    CheckInputError,
    CheckpointError,
    InfrastructureError,
    InternalError,
    InterpAssertError,
    PromptError,
    PropertyPluginError,
    SnapshotFileError,
    SpecError,
    UsageError,
)

HELD = 0
FAILED = 1
USAGE = 2
INTERNAL = 3
INFRASTRUCTURE = 69
INTERRUPTED = 130


@dataclass(frozen=True)
class ExitCode:
    code: int
    name: str
    meaning: str


TABLE: tuple[ExitCode, ...] = (
    ExitCode(HELD, "held", "every expectation held (track: on the last checkpoint)"),
    ExitCode(FAILED, "failed", "an expectation was measured and did not hold: the model changed"),
    ExitCode(USAGE, "usage", "the command line or a spec is wrong (flag, spec, missing file, no --force)"),
    ExitCode(INTERNAL, "internal", "a bug in interp_assert or a library it uses (traceback with --debug)"),
    ExitCode(
        INFRASTRUCTURE,
        "infrastructure",
        "a model, adapter or checkpoint cannot be loaded, a device is missing, memory or disk ran out",
    ),
    ExitCode(INTERRUPTED, "interrupted", "Ctrl-C"),
)

# Error classes to statuses, most specific first: the first class an error is an instance of wins.
BY_CLASS: tuple[tuple[type[BaseException], int], ...] = (
    (InternalError, INTERNAL),
    (PropertyPluginError, INFRASTRUCTURE),  # the installation is broken, not what the user wrote
    (InfrastructureError, INFRASTRUCTURE),  # ModelLoadError, ResourceError
    (MemoryError, INFRASTRUCTURE),
    (SpecError, USAGE),
    (UsageError, USAGE),
    (CheckpointError, USAGE),  # a missing checkpoint, a repeated step, another architecture
    (PromptError, USAGE),
    (CheckInputError, USAGE),
    (SnapshotFileError, USAGE),
    (CaptureError, USAGE),  # a model capture cannot read: its architecture, not this machine
    (InterpAssertError, USAGE),
)

# OSErrors that say the machine, not the user's input, is at fault
_MACHINE_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, errno.EIO, errno.ENOMEM, getattr(errno, "EDQUOT", None)) if code is not None
)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA, MPS) and ``RuntimeError: ... out of memory`` without importing torch."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def code_for(exc: BaseException) -> int:
    """The exit status an exception that ends a verb stands for."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if is_out_of_memory(exc):
        return INFRASTRUCTURE
    for cls, code in BY_CLASS:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError):
        return INFRASTRUCTURE if exc.errno in _MACHINE_ERRNOS else USAGE
    return INTERNAL


_SEVERITY = (HELD, FAILED, INFRASTRUCTURE, USAGE, INTERNAL)


def worst(*codes: int) -> int:
    """The most serious of several statuses (INTERNAL > USAGE > INFRASTRUCTURE > FAILED > HELD)."""
    return max(codes, key=lambda code: _SEVERITY.index(code) if code in _SEVERITY else len(_SEVERITY))


def markdown_table() -> str:
    """The table as docs/ci.md shows it."""
    lines = ["| code | meaning |", "|---:|---|"]
    lines += [f"| {entry.code} | **{entry.name}**: {entry.meaning} |" for entry in TABLE]
    return "\n".join(lines)
