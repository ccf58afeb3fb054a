"""The installed package's version, for specs and reports that say what wrote them."""

from __future__ import annotations


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interp-assert")
    except PackageNotFoundError:
        return "unknown"
