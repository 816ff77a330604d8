"""What every verifier returns and what it must provide: a value in [0, 1] with the evidence behind it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class RewardResult:
    """One verifier's verdict on one completion. `details` says why (what was compared, what failed), for
    rollout logs and for debugging a reward that looks wrong; it is JSON-serialisable."""

    value: float
    details: dict[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    """A reward function of one completion and its prompt row (which carries the verifiable target)."""

    name: str

    def score(self, completion: str, sample: Mapping[str, Any]) -> RewardResult: ...


def required(sample: Mapping[str, Any], key: str, verifier: str) -> Any:
    """sample[key], or a ValueError naming the verifier and the field: a prompt set without its targets is a
    data error to fix, not a completion to score 0."""
    if key not in sample:
        keys = ", ".join(sorted(sample)) or "none"
        raise ValueError(f"the {verifier} verifier needs a '{key}' field in each prompt row (this row has: {keys})")
    return sample[key]
