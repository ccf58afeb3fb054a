"""``composition``: Q-, K- or V-composition between heads, read from the weights (no prompts, no
forward pass), after Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits").

The score of sender A into receiver B (a later layer) is ``||OV_A X_B||_F / (||OV_A||_F ||X_B||_F)``
with ``X_B`` = ``QK_Bᵀ`` (K), ``QK_B`` (Q) or ``OV_B`` (V); the z-score compares the squared score
with its null under a Haar-random rotation of the residual basis (mean exactly 1/d_model, spread
from ``null_draws`` seeded rotations shared by every pair). Conventions and the factored
computation: :mod:`interp_assert.measure.weights.circuits`. A spec asserts one pair's z-score (or raw
score, ``score: raw``) within bounds, or that the ``k`` strongest senders into a receiver (or
receivers from a sender) include listed heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, HeadName
from interp_assert.vocab import parse_head

Head = tuple[int, int]
DEFAULT_DRAWS = 500
MIN_DRAWS, MAX_DRAWS = 10, 100_000  # as interp_assert.measure.weights.circuits checks them


def head_name(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


@dataclass(frozen=True)
class CompositionRequest:
    """Composition scores of ``senders`` x ``receivers`` (``None``: every head of the model)."""

    kind: Literal["Q", "K", "V"]
    senders: tuple[Head, ...] | None
    receivers: tuple[Head, ...] | None
    draws: int
    seed: int
    weights_only: ClassVar[bool] = True  # reads no activations: the runner skips the forward pass

    def run(self, loaded: Any, batches: list[Any]) -> dict[tuple[Head, Head], tuple[float, float]]:
        from interp_assert.measure.loading.architecture import model_map
        from interp_assert.measure.weights import circuits as weights

        heads = weights.all_heads(model_map(loaded.model))
        senders = list(self.senders) if self.senders is not None else heads
        receivers = list(self.receivers) if self.receivers is not None else heads
        return weights.pair_table(loaded.model, self.kind, senders, receivers, self.draws, self.seed)


class WeightExpectation(Bounded):
    """What the weight properties share: no ``prompts`` (they read no activations)."""

    prompts: str = ""

    @model_validator(mode="after")
    def _no_prompts(self) -> WeightExpectation:
        if "prompts" in self.model_fields_set:
            raise ValueError(
                f"{self.property} reads the weights only and takes no prompts; remove 'prompts: {self.prompts}'"
            )
        return self


class Composition(WeightExpectation):
    property: Literal["composition"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        (
            "`composition` (Q, K or V); `sender` and `receiver` with bounds, or one of them with `k` and "
            "`include: [heads]`; `score` (`z`, default, or `raw`), `null_draws` (500), `seed` (0). No `prompts`"
        ),
        (
            "read from the weights: the z-score of the sender-into-receiver composition score against "
            "Haar-rotated nulls (or the raw score) is within bounds; or the `k` strongest senders into "
            "`receiver` (receivers from `sender`) include the listed heads"
        ),
    )
    composition: Literal["Q", "K", "V"]
    sender: HeadName | None = None
    receiver: HeadName | None = None
    score: Literal["z", "raw"] = "z"
    k: int | None = Field(default=None, ge=1)
    include: list[HeadName] | None = Field(default=None, min_length=1)
    null_draws: int = DEFAULT_DRAWS
    seed: int = 0

    unit_bounds: ClassVar[bool] = False  # z-scores are unbounded; raw bounds are checked below
    bounds_required: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_form(self) -> Composition:
        if not MIN_DRAWS <= self.null_draws <= MAX_DRAWS:
            raise ValueError(f"null_draws must be between {MIN_DRAWS} and {MAX_DRAWS}; got {self.null_draws}")
        bounded = self.at_least is not None or self.at_most is not None
        if self.score == "raw":
            for key in ("at_least", "at_most"):
                value = getattr(self, key)
                if value is not None and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key}: {value} is outside [0, 1], the range of a raw composition score")
        if self.sender is not None and self.receiver is not None:
            if self.k is not None or self.include is not None:
                raise ValueError("give a pair (sender and receiver) with bounds, or one of them with k and include")
            if not bounded:
                raise ValueError("give at least one bound for the pair: 'at_least' and/or 'at_most'")
            sender, receiver = parse_head(self.sender), parse_head(self.receiver)
            if receiver[0] <= sender[0]:
                raise ValueError(
                    f"receiver {self.receiver} is not in a later layer than sender {self.sender}: "
                    f"a head reads only what earlier layers wrote (receiver layer must be > {sender[0]})"
                )
        elif self.sender is not None or self.receiver is not None:
            if self.k is None or self.include is None:
                raise ValueError(
                    "with only a sender (or only a receiver), give 'k' and 'include: [heads]' "
                    "(add the other head and bounds to bound one pair)"
                )
            if bounded:
                raise ValueError("bounds apply to one pair; give both sender and receiver, or drop the bounds")
            if len(self.include) > self.k:
                raise ValueError(f"{len(self.include)} heads listed but k is {self.k}")
            anchor = parse_head(self.receiver or self.sender or "")
            for name in self.include:
                layer = parse_head(name)[0]
                if (self.receiver and layer >= anchor[0]) or (self.sender and layer <= anchor[0]):
                    side = "earlier" if self.receiver else "later"
                    raise ValueError(f"{name} is not in an {side} layer than {self.receiver or self.sender}")
        else:
            raise ValueError("name a 'sender', a 'receiver', or both")
        return self

    def request(self) -> CompositionRequest:
        sender = (parse_head(self.sender),) if self.sender else None
        receiver = (parse_head(self.receiver),) if self.receiver else None
        return CompositionRequest(self.composition, sender, receiver, self.null_draws, self.seed)

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([self.request()]))

    def check(self, context: CheckContext) -> Outcome:
        table = context.measurements.extras.get(self.request())
        if table is None:
            raise CheckInputError("composition scores were not measured")
        which = 1 if self.score == "z" else 0
        what = f"{self.composition}-composition {'z-score' if self.score == 'z' else 'score'}"
        if self.sender is not None and self.receiver is not None:
            raw, z = table[(parse_head(self.sender), parse_head(self.receiver))]
            value = (raw, z)[which]
            passed, line = self.within(f"{self.sender} -> {self.receiver} {what}", value)
            detail = f"raw score {raw:.4f} (null mean of the squared score 1/d_model), z-score {z:.2f}"
            return Outcome(passed, line, (detail,), {"score": raw, "z": z}, (self.sender, self.receiver), value=value)
        return self._top(table, which, what)

    def _top(self, table: dict[tuple[Head, Head], tuple[float, float]], which: int, what: str) -> Outcome:
        assert self.k is not None and self.include is not None
        if self.receiver is not None:
            anchor, side = parse_head(self.receiver), "senders into"
            ranked = sorted(((s, v) for (s, r), v in table.items() if r == anchor), key=lambda sv: -sv[1][which])
        else:
            anchor, side = parse_head(self.sender or ""), "receivers from"
            ranked = sorted(((r, v) for (s, r), v in table.items() if s == anchor), key=lambda rv: -rv[1][which])
        if self.k > len(ranked):
            raise CheckInputError(
                f"k is {self.k} but {head_name(anchor)} has only {len(ranked)} {side.split()[0]}; "
                f"k must be between 1 and {len(ranked)}"
            )
        names = [head_name(h) for h, _ in ranked]
        top = names[: self.k]
        missing = [name for name in self.include if name not in top]
        shown = ", ".join(f"{head_name(h)} {v[which]:.3f}" for h, v in ranked[: max(self.k, 5)])
        subject = f"top {self.k} {self.composition}-composition {side} {head_name(anchor)}"
        if missing:
            where = ", ".join(
                f"{n} {ranked[names.index(n)][1][which]:.3f} (rank {names.index(n) + 1})" if n in names else n
                for n in missing
            )
            headline = f"{subject} do not include the expected heads; missing: {where}"
        else:
            headline = f"{subject} include {', '.join(self.include)}"
        measured: dict[str, float | str] = {f"top{self.k}": ",".join(top)}
        for name in self.include:
            if name in names:
                raw, z = ranked[names.index(name)][1]
                measured |= {f"{name}.score": raw, f"{name}.z": z}
        return Outcome(
            not missing, headline, (f"by {what}: {shown}",), measured, tuple(missing or top), value=" ".join(top)
        )


# ---- what discover writes ----


def findings(
    pairs: dict[tuple[Head, Head], tuple[float, float]], max_pairs: int, keep: float, used_names: set[str]
) -> Any:
    """The strongest K-composition pairs (by z-score) from found previous-token heads into found
    induction heads, each bounded at ``keep`` of its measured z-score."""
    from interp_assert.properties.findings import Section, lower_bound, unique_name

    section = Section("K-composition from previous-token into induction heads (read from the weights)")
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1][1])[:max_pairs]
    for (sender, receiver), (raw, z) in ranked:
        if z <= 0:
            section.notes.append(
                f"{head_name(sender)} -> {head_name(receiver)}: z {z:.2f}, no composition beyond the null"
            )
            continue
        section.expectations.append(
            {
                "name": unique_name(
                    f"{head_name(sender).lower()}_keys_{head_name(receiver).lower()}", "weights", used_names
                ),
                "description": f"measured raw {raw:.4f}, z-score {z:.4g} ({DEFAULT_DRAWS} null draws, seed 0)",
                "property": "composition",
                "composition": "K",
                "sender": head_name(sender),
                "receiver": head_name(receiver),
                "at_least": lower_bound(z, keep),
            }
        )
    return section
