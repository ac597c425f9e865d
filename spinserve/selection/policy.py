"""The selection protocol and the messages it speaks. No torch, no state here.

Per step the engine and a policy exchange three messages::

    choices = policy.choose(views, load)      # before drafting: one Choice per decoding request
    ...                                       # draft, run the target, verify
    policy.observe(feedback, timing)          # what each of those requests got, and the cost
    policy.finish(request_id)                 # once, when a request leaves the engine

A `RequestView` carries only what a server legitimately knows about a request (never its
category); a `Feedback` carries raw measurements, not a reward, so each policy decides how to
turn time into cost (see `spin` for why the split of a shared forward matters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from spinserve.config.speculative import NO_DRAFTER, check_draft_lengths
from spinserve.selection.step_gate import Lookup


@dataclass(frozen=True)
class Choice:
    """A drafter and how many draft tokens to ask of it; ``drafter=None`` (k = 0) means no
    speculation this step.

    >>> Choice("ngram", 4).label, NO_SPECULATION.label, Choice.parse("ngram@4")
    ('ngram@4', 'none', Choice(drafter='ngram', num_draft_tokens=4))
    """

    drafter: str | None
    num_draft_tokens: int

    def __post_init__(self) -> None:
        if self.drafter is None:
            if self.num_draft_tokens != 0:
                raise ValueError("no speculation (drafter None) takes num_draft_tokens = 0")
            return
        if self.drafter in ("", NO_DRAFTER):
            raise ValueError(f"drafter name {self.drafter!r}: use NO_SPECULATION instead")
        check_draft_lengths(
            f"num_draft_tokens of drafter {self.drafter!r}", [self.num_draft_tokens], 1
        )

    @property
    def speculates(self) -> bool:
        return self.drafter is not None

    @property
    def label(self) -> str:
        """``NAME@K`` or ``none``: the key of histograms and oracle tables."""
        return NO_DRAFTER if self.drafter is None else f"{self.drafter}@{self.num_draft_tokens}"

    @staticmethod
    def parse(label: str) -> Choice:
        """Inverse of `label` (a drafter name may itself contain ``@``)."""
        if label == NO_DRAFTER:
            return NO_SPECULATION
        name, sep, k = label.rpartition("@")
        if not sep or not name or not k.isdigit():
            raise ValueError(f"choice {label!r} is not NAME@K or {NO_DRAFTER!r}")
        return Choice(name, int(k))


NO_SPECULATION = Choice(None, 0)

# What the engine measures at start for a policy that wants step costs (and what the
# simulator hands a policy in its place): target forwards of one sequence of these lengths
# (a decode and verifications of 2, 4 and 8 drafts), and each drafter's call for one draft
# token after unseen sequences of these lengths, whose slope is its cost per token caught up
# (a model drafter's prefill), which a cold request with a long prompt would otherwise pay
# to learn.
CALIBRATION_TOKENS = (1, 3, 5, 9)
CALIBRATION_DRAFT_TOKENS = (1, 64)


@dataclass(frozen=True)
class RequestView:
    """What a policy may know about a decoding request: its identity and progress."""

    request_id: str
    num_prompt_tokens: int
    num_output_tokens: int


@dataclass(frozen=True)
class LoadView:
    """The engine's load when choosing: requests in the coming forward and waiting behind."""

    num_running: int
    num_waiting: int = 0

    def __post_init__(self) -> None:
        if self.num_running < 1:
            raise ValueError(f"num_running must be >= 1, got {self.num_running}")
        if self.num_waiting < 0:
            raise ValueError(f"num_waiting must be >= 0, got {self.num_waiting}")


@dataclass(frozen=True)
class Feedback:
    """What one request got from one step.

    ``num_drafted``: draft tokens verified (may be fewer than the choice asked: the drafter
    proposed fewer, or the scheduler's budget cut them). ``draft_seconds``: this request's
    share of its drafter's batched call (call seconds / requests in the call; 0 without one).
    """

    request_id: str
    choice: Choice
    num_drafted: int
    num_accepted: int
    draft_seconds: float

    def __post_init__(self) -> None:
        if not 0 <= self.num_accepted <= self.num_drafted:
            raise ValueError(
                f"need 0 <= num_accepted <= num_drafted, got {self.num_accepted}, "
                f"{self.num_drafted}"
            )
        if self.draft_seconds < 0:
            raise ValueError(f"draft_seconds must be >= 0, got {self.draft_seconds}")

    @property
    def num_emitted(self) -> int:
        """Accepted tokens plus the recovered or bonus token."""
        return self.num_accepted + 1

    @property
    def num_verified_tokens(self) -> int:
        """Tokens this request put in the target forward: its drafts and its last token."""
        return self.num_drafted + 1


@dataclass(frozen=True)
class StepTiming:
    """The target forward the feedback came from: its seconds (forward plus verification),
    its tokens and its sequences (prefill chunks included), and how many of its tokens were
    prompt tokens of prefill chunks (0 in a step of decodes and verifications only)."""

    forward_seconds: float
    num_batched_tokens: int
    num_seqs: int
    num_prefill_tokens: int = 0

    def __post_init__(self) -> None:
        if self.forward_seconds < 0:
            raise ValueError(f"forward_seconds must be >= 0, got {self.forward_seconds}")
        if self.num_batched_tokens < 1 or self.num_seqs < 1:
            raise ValueError("a forward has at least one sequence and one token")
        if not 0 <= self.num_prefill_tokens <= self.num_batched_tokens:
            raise ValueError("num_prefill_tokens must be in 0..num_batched_tokens")


@dataclass(frozen=True)
class DraftTiming:
    """A drafter's call on a sequence it had not seen: ``num_tokens`` tokens to catch up on
    (for a model drafter, a prefill of them) and one draft token, in ``seconds``. Two lengths
    give the cost per token caught up, which a policy needs before a drafter's first use on a
    long prompt, not after."""

    drafter: str
    num_tokens: int
    seconds: float

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if self.seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds}")


@runtime_checkable
class StepGatedPolicy(Protocol):
    """A policy that also decides, per step, which lookup draft to play and how far.

    The engine asks every lookup drafter for a draft for each request the policy manages
    (unless it chose a model drafter for it), then `gate` picks one (cut to k) or none; after
    verification `learn_lookups` scores every one of them against the emitted tokens, played
    or not (full information). ``gates_steps`` False turns that off."""

    gates_steps: bool

    def gate(
        self, request_id: str, lookups: Sequence[Lookup], choice: Choice, num_running: int
    ) -> Choice:
        """The lookup draft to play (drafter and k) or `NO_SPECULATION`; ``choice`` is what
        `choose` said for the request this step."""
        ...

    def learn_lookups(
        self,
        request_id: str,
        lookups: Sequence[Lookup],
        emitted: Sequence[int],
        num_drafted: int,
        num_accepted: int,
    ) -> None:
        """The step's lookup drafts, the tokens the target emitted, and the played draft's
        outcome."""
        ...


class SelectionPolicy(Protocol):
    """Gives each decoding request a `Choice` per step and learns from `Feedback`.

    ``wants_step_costs``: the engine measures a few target forwards of different lengths, and
    each drafter's call on sequences of two lengths, when it starts and hands them to
    `calibrate`, so what a draft token and a drafter's catch-up cost is known before the
    first choice instead of learned by paying for it.
    """

    name: str
    wants_step_costs: bool

    def calibrate(
        self, timings: Sequence[StepTiming], draft_timings: Sequence[DraftTiming] = ()
    ) -> None:
        """Target forwards (one sequence, several lengths) and drafter calls on unseen
        sequences, measured before any request."""
        ...

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        """One `Choice` per request, in order."""
        ...

    def observe(self, feedback: Sequence[Feedback], timing: StepTiming) -> None:
        """Outcomes of the requests chosen for in the last `choose`, and their forward."""
        ...

    def finish(self, request_id: str) -> None:
        """The request left the engine (finished or aborted): forget or learn from it."""
        ...
