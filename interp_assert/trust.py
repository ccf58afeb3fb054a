"""Trust settings: what lets a model's own code or pickled weights run.

They come only from the person running the command, as a command-line flag or an environment
variable, never from a file that can arrive with the specs (an ini file, a spec, a checkpoint).
"""

from __future__ import annotations

import os

# setting (the pytest option's ini-style name) -> the environment variable that turns it on
ENVIRONMENT = {
    "interp_trust_remote_code": "INTERP_ASSERT_TRUST_REMOTE_CODE",
    "interp_allow_pickle": "INTERP_ASSERT_ALLOW_PICKLE",
}
TRUE_WORDS = ("1", "true", "yes", "on", "y", "t")
FALSE_WORDS = ("0", "false", "no", "off", "n", "f", "")


def from_environment(setting: str) -> bool:
    """Whether the setting's environment variable turns it on; ValueError names a value that is neither."""
    variable = ENVIRONMENT[setting]
    value = os.environ.get(variable, "").strip().lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"{variable}={value!r} is not valid; set it to 1 (allow) or 0 (refuse), or unset it")
    return value in TRUE_WORDS
