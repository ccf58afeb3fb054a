"""The plugin's command-line options, each with an ini key of the same name.

``pytest --interp-missing skip`` and ``[tool.pytest.ini_options] interp_missing = "skip"``
mean the same; the command line wins. Nothing here imports torch.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import pytest

from interp_assert.option_table import BY_NAME, OPTIONS
from interp_assert.trust import ENVIRONMENT as TRUST_ENV
from interp_assert.trust import FALSE_WORDS, TRUE_WORDS, from_environment


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("interp_assert", "model-internals specs (interp_assert)")
    for option in OPTIONS:
        ini_help = f"{option.help} (same as {option.flag})"
        if option.kind == "append":
            group.addoption(option.flag, action="append", default=None, metavar=option.metavar, help=option.help)
            parser.addini(option.name, ini_help, type="linelist", default=[])
        elif option.kind == "flag":
            group.addoption(option.flag, action="store_true", default=None, help=option.help)
            if option.name in TRUST_ENV:
                ini_help = f"not read from ini files: give {option.flag} or set {TRUST_ENV[option.name]}=1"
            # read as text, so a bad value is an error that names the key and the file
            parser.addini(option.name, ini_help, type="string", default="")
        else:
            choices = option.choices or None
            group.addoption(option.flag, default=None, choices=choices, metavar=option.metavar, help=option.help)
            parser.addini(option.name, ini_help, type="string", default=option.default or "")


def get(config: pytest.Config, name: str) -> Any:
    """The option's value: the command line's if given, else the ini key's, else the default."""
    option = BY_NAME[name]
    if name in TRUST_ENV:
        return trusted(config, name)
    given = config.getoption(option.flag)
    if given is not None:
        return given
    value = config.getini(name)
    if option.kind == "append":
        return list(value)
    if option.kind == "flag":
        return _ini_bool(config, name)
    if not value:
        return option.default
    if option.choices and value not in option.choices:
        raise pytest.UsageError(
            f"ini option {name} = {value!r} is not valid; choose one of {', '.join(option.choices)}"
        )
    return value


def _where(config: pytest.Config) -> str:
    return str(config.inipath) if config.inipath else "the ini file"


def _ini_text(config: pytest.Config, name: str) -> str:
    """The ini key's value as written ('' when unset); a TOML true/false or list is shown as written."""
    try:
        value = config.getini(name)
    except pytest.UsageError:  # a TOML value that is not a string: true, 1, a list
        raw = config.inicfg.get(name)
        value = getattr(raw, "value", raw)
        return str(value).lower() if isinstance(value, bool) else str(value)
    return str(value).strip()


def _ini_bool(config: pytest.Config, name: str) -> bool:
    return ini_bool(_ini_text(config, name), name, _where(config))


def ini_bool(text: str, name: str, where: str) -> bool:
    """An ini boolean as written; anything but true/false (1/0, yes/no, on/off) is a usage error
    naming the file and the key."""
    if text.strip().lower() in TRUE_WORDS:
        return True
    if text.strip().lower() in FALSE_WORDS:
        return False
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise pytest.UsageError(f"{where}: ini key {name} = {shown!r} is not a boolean; write true or false")


def trusted(config: pytest.Config, name: str) -> bool:
    """A trust setting: the command-line flag or the environment variable, never an ini file.

    An ini key that asks for it, or an ini file's ``addopts`` that passes the flag, is a usage error
    naming the file and the key, so a pytest.ini planted beside the specs cannot turn it on."""
    flag, variable = BY_NAME[name].flag, TRUST_ENV[name]
    instead = f"give {flag} on the command line or set {variable}=1 in the environment of the run"
    if _ini_text(config, name).lower() not in FALSE_WORDS:
        raise pytest.UsageError(
            f"{_where(config)}: ini key {name} is not read: settings that let a model's code or pickles run "
            "come only from the person running the command, never from an ini file, which can arrive with the "
            f"specs; remove the key and {instead}"
        )
    typed = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    typed_flag = any(str(arg) == flag or str(arg).startswith(flag + "=") for arg in typed)
    if config.getoption(flag) and not typed_flag:
        raise pytest.UsageError(
            f"{_where(config)}: addopts passes {flag}, which is not read from ini files: settings that let a "
            f"model's code or pickles run come only from the person running the command; remove it and {instead}"
        )
    try:
        return typed_flag or from_environment(name)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def configure_checkpoints(config: pytest.Config, *, updating: bool) -> None:
    """Resolve ``--interp-checkpoints`` once, before collection: a missing checkpoint, a glob that
    matches nothing, a repeated step or another architecture is a usage error naming it."""
    from interp_assert.errors import InterpAssertError
    from interp_assert.measure.loading import checkpoints
    from interp_assert.pytest_plugin.stash import CHECKPOINTS_KEY

    if updating:
        raise pytest.UsageError(
            "--snapshot-update with --interp-checkpoints would store a checkpoint's numbers as the spec's own "
            "snapshot; record snapshots without --interp-checkpoints (each checkpoint is then compared with them)"
        )
    given = get(config, "interp_checkpoints")
    from_ini = config.getoption("--interp-checkpoints") is None and config.inipath is not None
    here = config.inipath.parent if from_ini and config.inipath else config.invocation_params.dir
    try:
        found = checkpoints.resolve(checkpoints.split_list(given), get(config, "interp_checkpoint_order"), here=here)
        checkpoints.check_architectures(found)
    except InterpAssertError as exc:
        raise pytest.UsageError(f"--interp-checkpoints: {exc}") from None
    config.stash[CHECKPOINTS_KEY] = found
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): items of one checkpoint (pytest-xdist's loadgroup)")


def configure_ci(config: pytest.Config, *, updating: bool) -> None:
    """``--interp-limit`` and ``--interp-cache``, checked once before collection: a smoke run never
    writes snapshots, and a cache folder another user could write is refused."""
    from interp_assert.errors import UsageError
    from interp_assert.pytest_plugin.gates import parse_gate

    try:
        parse_gate(get(config, "interp_gate"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    limit = get(config, "interp_limit")
    if limit is not None:
        from interp_assert.run_options import _limit

        try:
            _limit(limit)
        except UsageError as exc:
            raise pytest.UsageError(str(exc)) from None
        if updating:
            raise pytest.UsageError(
                f"--interp-limit {limit} with --snapshot-update would store a smoke run's numbers as the spec's "
                "snapshots; a smoke run never writes snapshots (drop one of the two)"
            )
    if get(config, "interp_cache"):
        from interp_assert.result_cache import check_folder
        from interp_assert.run_options import result_cache_folder

        try:
            check_folder(result_cache_folder())
        except UsageError as exc:
            raise pytest.UsageError(str(exc)) from None
