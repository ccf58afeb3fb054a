"""The base of every spec model: strict pydantic, no unknown keys, no NaN or infinity."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # no NaN or infinity anywhere: a NaN bound compares false both ways and checks nothing
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
