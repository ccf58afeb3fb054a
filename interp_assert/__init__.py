"""interp_assert: put a language model's internals under test.

The public API, imported lazily so that loading the pytest plugin (``pytest --help``) never
imports torch::

    from interp_assert import Interp, load_spec, Runner, RunOptions, InterpAssertError
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Interp": "interp_assert.api",
    "ExpectationFailed": "interp_assert.api",
    "load_spec": "interp_assert.spec",
    "parse_spec": "interp_assert.spec",
    "Runner": "interp_assert.runner",
    "RunOptions": "interp_assert.run_options",
    "InterpAssertError": "interp_assert.errors",
    "SpecError": "interp_assert.errors",
    "ModelLoadError": "interp_assert.errors",
    "CaptureError": "interp_assert.errors",
    "register_property": "interp_assert.properties",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from interp_assert.version import package_version

        return package_version()
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(_EXPORTS[name])
        return getattr(module, "register" if name == "register_property" else name)
    raise AttributeError(f"module 'interp_assert' has no attribute {name!r}")
