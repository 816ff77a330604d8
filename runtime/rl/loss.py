"""The GRPO loss and its parts, as pure tensor functions (no model, no trainer): each is tested on hand-computed values.

- `group_advantages(rewards)`: (reward - group mean) / (group std + eps) per group of one prompt's samples (population
  std; left out with `std_norm=False`, Dr. GRPO), negative ones times `negative_scale` (0: only samples above their
  group's mean teach, as in rejection-sampling fine-tuning); a group whose rewards are all equal (spread at most
  `ZERO_SPREAD`, the rule active sampling filters by) has advantage 0 on every sample and is flagged (it carries no
  signal).
- `clipped_surrogate(logp, old, adv, clip_low, clip_high)`: PPO's per-token loss -min(r A, clip(r, 1 - clip_low,
  1 + clip_high) A) with r = exp(logp - old), and where the clipped branch was taken.
- `correction(trainer, sidecar, mask, kind, level, cap, low)`: the trainer/sidecar importance ratio
  rho = exp(trainer - sidecar) per token, or per sequence (the product over the sequence's tokens), and the weight it
  gives: `tis` min(rho, cap), `mis` 1 when low <= rho <= cap else 0 (masked), `none` 1.
- `kl_k3(logp, ref)`: Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0,
  unbiased for samples drawn from pi).
- `token_logprobs(logits, targets, temperature)`: log p(target) under softmax(logits / T), the sampling distribution
  vLLM's `processed_logprobs` reports.
- `grpo_token_loss(...)`: the per-token loss the trainer sums: surrogate x correction weight + kl_coef x k3, on
  response tokens only; the trainer divides the sum by the mini-batch's response-token count (token-level
  aggregation: every token weighs the same, long responses are not down-weighted per sequence).

Test: `python -m pytest tests/runtime/test_rl.py -q -k "advantage or clip or tis or mis or kl"`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from runtime.rl.rollouts import ZERO_SPREAD

CorrectionKind = Literal["none", "tis", "mis"]
Level = Literal["token", "sequence"]
ADV_EPS = 1e-6
LOG_RHO_MAX = 20.0  # exp(20) ~ 5e8: a sequence-level ratio beyond this is reported as this


def group_advantages(rewards: torch.Tensor, eps: float = ADV_EPS, *, std_norm: bool = True,
                     negative_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (groups, group_size) -> (advantages of the same shape, bool (groups,) of zero-variance groups).
    std_norm=False leaves the std out (Dr. GRPO); negative advantages are multiplied by negative_scale."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, group_size >= 2), got {tuple(rewards.shape)}")
    if not 0.0 <= negative_scale <= 1.0:
        raise ValueError(f"negative_scale must be within [0, 1], got {negative_scale}")
    rewards = rewards.double()
    mean = rewards.mean(dim=1, keepdim=True)
    zero = rewards.amax(dim=1) - rewards.amin(dim=1) <= ZERO_SPREAD
    adv = rewards - mean
    if std_norm:
        adv = adv / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    adv = torch.where(adv < 0, adv * negative_scale, adv)
    adv[zero] = 0.0
    return adv, zero


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_low: float,
                      clip_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token loss, ratio, bool where the clipped term was the minimum); adv broadcasts over tokens."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), ratio, clipped < unclipped


@dataclass
class Correction:
    weights: torch.Tensor  # (B, L): multiplies each token's surrogate (0 where masked)
    rho: torch.Tensor  # (B, L): the ratio each token's weight came from (the sequence's ratio at sequence level)
    truncated: torch.Tensor  # bool (B, L): tis weight capped
    masked: torch.Tensor  # bool (B, L): mis weight 0


def correction(trainer_logp: torch.Tensor, sidecar_logp: torch.Tensor, mask: torch.Tensor, *,
               kind: CorrectionKind, level: Level, cap: float, low: float = 0.0) -> Correction:
    """Importance weights between the trainer's behaviour log-probs and the sidecar's (see the module docstring).
    All inputs (B, L); mask: bool, the response tokens. Outside the mask weights are 0 and rho is 1."""
    if kind not in ("none", "tis", "mis"):
        raise ValueError(f"correction kind {kind!r}: expected none, tis or mis")
    if level not in ("token", "sequence"):
        raise ValueError(f"correction level {level!r}: expected token or sequence")
    mask = mask.bool()
    log_rho = torch.where(mask, (trainer_logp - sidecar_logp).double(), torch.zeros((), dtype=torch.float64))
    if level == "sequence":
        log_rho = log_rho.sum(dim=1, keepdim=True).expand_as(log_rho)
    log_rho = log_rho.clamp(max=LOG_RHO_MAX)
    rho = torch.exp(log_rho)
    none = torch.zeros_like(mask)
    if kind == "tis":
        truncated = (rho > cap) & mask
        weights = torch.minimum(rho, torch.tensor(cap, dtype=rho.dtype))
        masked = none
    elif kind == "mis":
        keep = (rho <= cap) & (rho >= low)
        weights, truncated, masked = keep.double(), none, (~keep) & mask
    else:
        weights, truncated, masked = torch.ones_like(rho), none, none
    weights = torch.where(mask, weights, torch.zeros((), dtype=weights.dtype)).to(trainer_logp.dtype)
    return Correction(weights, torch.where(mask, rho, torch.ones((), dtype=rho.dtype)), truncated, masked)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from the sampled tokens' log-probs under both."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits (B, L, V), targets (B, L) -> log softmax(logits / T)[target] (B, L), in fp32."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                    weights: torch.Tensor, *, clip_low: float, clip_high: float, kl_coef: float = 0.0,
                    ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(summed loss over the masked tokens, per-token parts for metrics). adv: (B,) or (B, 1)."""
    adv = adv.reshape(-1, 1).to(logp.dtype)
    surrogate, ratio, clipped = clipped_surrogate(logp, old_logp, adv, clip_low, clip_high)
    per_token = surrogate * weights
    kl = torch.zeros_like(logp)
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs the reference model's log-probs")
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + kl_coef * kl
    maskf = mask.to(logp.dtype)
    return (per_token * maskf).sum(), {"ratio": ratio.detach(), "clipped": clipped & mask.bool(),
                                       "kl": kl.detach()}
