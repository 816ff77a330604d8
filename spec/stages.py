"""Pipeline stages: a discriminated union on `kind`."""
from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from spec.base import Fraction, Identifier, NonNegativeInt, PositiveFloat, PositiveInt, Spec
from spec.data import DatasetRef
from spec.generation import Delta, Distill, ModelRef
from spec.model import RopeScaling
from spec.training import TrainingFields

class StageBase(TrainingFields):
    """Fields every stage has."""

    name: Identifier = Field(description="Unique stage name; job ids derive from it.")
    description: str = Field("", description="Free text shown in plans and diffs.")
    from_: ModelRef | None = Field(
        None, alias="from", description="Initial weights: an earlier stage, a Hugging Face id or a folder."
    )
    evals: list[Identifier] | None = Field(
        None, description="Eval suites run on this stage's model (default: as evals.when and each suite's models say; [] none)."
    )


class LmStage(StageBase):
    """Language-model loss on a weighted mixture of sources."""

    mix: dict[str, Fraction] | None = Field(
        None, description="Weights per data source; default the recipe's data.mix (or the RegMix solution)."
    )


class PretrainStage(LmStage):
    """Pretraining from scratch (or from `from`) on the data mix."""

    kind: Literal["pretrain"] = Field(description="Stage kind.")


class MidtrainStage(LmStage):
    """Mid-training: continued pretraining on a curated mix, usually with annealing."""

    kind: Literal["midtrain"] = Field(description="Stage kind.")


class LongContextStage(LmStage):
    """Context extension: a new max length and RoPE scaling, from the previous checkpoint."""

    kind: Literal["long_context"] = Field(description="Stage kind.")
    max_seq_len: PositiveInt = Field(description="New maximum context length of the model.")
    rope_scaling: RopeScaling | None = Field(None, description="New RoPE scaling; null keeps the model's.")
    rope_theta: PositiveFloat | None = Field(None, description="New RoPE theta; null keeps the model's.")


class SftStage(StageBase):
    """Supervised fine-tuning on a dataset or on distilled traces; loss on response tokens only."""

    kind: Literal["sft"] = Field(description="Stage kind.")
    dataset: DatasetRef | None = Field(None, description="A chat/instruction dataset (or give distill).")
    distill: Distill | None = Field(None, description="Generate the data with a teacher (or give dataset).")
    chat_template: str | None = Field(None, description="Jinja chat template; default the tokenizer's.")

    @model_validator(mode="after")
    def _one_data_source(self) -> "SftStage":
        if (self.dataset is None) == (self.distill is None):
            raise ValueError("give exactly one of dataset or distill")
        return self


class DpoStage(StageBase):
    """Direct preference optimisation against the frozen `from` model."""

    kind: Literal["dpo"] = Field(description="Stage kind.")
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature.")
    loss: Literal["dpo", "dpo_norm"] = Field("dpo", description="Sigmoid DPO, or its length-normalised variant.")
    pairs: DatasetRef | None = Field(None, description="A preference dataset (or give delta).")
    delta: Delta | None = Field(None, description="Generate pairs from a strong and a weak model.")

    @model_validator(mode="after")
    def _one_pair_source(self) -> "DpoStage":
        if (self.pairs is None) == (self.delta is None):
            raise ValueError("give exactly one of pairs or delta")
        return self


class PromptFilter(Spec):
    """Offline difficulty filter of the RL prompts (Olmo 3): before the first step the starting model samples every
    prompt; prompts it always or never solves are left out."""

    samples_per_prompt: Annotated[int, Field(ge=2)] = Field(
        8,
        description="Samples of each prompt, at the rollout temperature and response budget. A prompt whose samples "
        "all get the same reward is left out: as a GRPO group it would carry no gradient.",
    )


class Grpo(Spec):
    """GRPO: group-normalised advantages with PPO-style clipping."""

    group_size: Annotated[int, Field(ge=2)] = Field(description="Responses sampled per prompt.")
    prompts_per_step: PositiveInt = Field(description="Prompts per RL step.")
    max_response_tokens: PositiveInt = Field(description="Most tokens per response.")
    temperature: PositiveFloat = Field(1.0, description="Rollout sampling temperature.")
    kl_coef: Annotated[float, Field(ge=0)] = Field(0.0, description="KL penalty to the reference model.")
    clip_low: PositiveFloat = Field(0.2, description="Lower clip: ratio >= 1 - clip_low.")
    clip_high: PositiveFloat = Field(0.28, description="Upper clip: ratio <= 1 + clip_high (clip-higher).")
    advantage_std: bool = Field(
        True,
        description="Divide each group's centred rewards by the group's reward std (GRPO). False: centred rewards "
        "only (Dr. GRPO), so groups that are nearly all right or all wrong weigh less than evenly split ones.",
    )
    negative_scale: Fraction = Field(
        1.0,
        description="Multiplies negative advantages: 1 is GRPO; 0 learns only from samples better than their "
        "group's mean (as rejection-sampling fine-tuning does), which moves the policy only towards its own "
        "verified answers; values between weigh the push away from wrong samples down.",
    )
    active_sampling: bool = Field(
        False,
        description="Active sampling (Olmo 3; DAPO's dynamic sampling): a group whose rewards are all equal carries "
        "no gradient, so leave it out and draw more prompts until the step has prompts_per_step groups with "
        "reward variance.",
    )
    max_sampling_rounds: PositiveInt = Field(
        8,
        description="Active sampling: draws of prompts_per_step prompts per step at most; a step that finds fewer "
        "groups with reward variance trains on those it found.",
    )
    prompt_filter: PromptFilter | None = Field(
        None,
        description="Sample every prompt with the starting model before the first step and train only on those it "
        "solves sometimes (saved in the job's output folder; a resumed job reuses it). Cuts the draws active "
        "sampling makes per step when most groups are all right or all wrong.",
    )


class Reward(Spec):
    """A weighted verifier."""

    verifier: Literal["math", "code", "format"] = Field(description="Verifier.")
    weight: PositiveFloat = Field(1.0, description="Weight in the total reward.")


class Correction(Spec):
    """Importance-sampling correction for the trainer/generator mismatch."""

    kind: Literal["none", "tis", "mis"] = Field("none", description="None, truncated (tis) or masked (mis) IS.")
    level: Literal["token", "sequence"] = Field("token", description="Ratio per token or per sequence.")
    cap: PositiveFloat = Field(2.0, description="tis: weights are min(ratio, cap); mis: upper bound.")
    low: Fraction = Field(0.0, description="mis: lower bound of kept ratios.")


class AsyncSpec(Spec):
    """Asynchronous RL: how stale rollouts may be and how they are corrected."""

    max_staleness: NonNegativeInt = Field(0, description="Policy versions a rollout may lag (0: on-policy).")
    inflight_updates: bool = Field(False, description="Push weights into the sidecar mid-generation.")
    logprobs: Literal["recompute", "rollout"] = Field(
        "recompute", description="Behaviour log-probs: recomputed by the trainer or taken from the sidecar."
    )
    correction: Correction = Field(default_factory=Correction, description="Importance-sampling correction.")


class Rollout(Spec):
    """The vLLM rollout sidecar, on GPUs of its own."""

    engine: Literal["vllm"] = Field("vllm", description="Generation engine.")
    nodes: PositiveInt = Field(1, description="Nodes for the sidecar.")
    gpus: Annotated[int, Field(ge=0)] = Field(description="GPUs for the sidecar (0 on CPU).")
    tensor_parallel: PositiveInt = Field(1, description="Tensor-parallel degree of each engine.")
    max_model_len: PositiveInt = Field(description="vLLM max model length (prompt + response).")
    gpu_memory_utilization: Fraction = Field(0.9, description="Fraction of GPU memory vLLM may take.")
    max_num_seqs: PositiveInt = Field(256, description="Most sequences an engine decodes at once.")
    max_prompt_tokens: PositiveInt = Field(2048, description="Most prompt tokens (longer prompts are dropped).")
    weight_sync: Literal["filesystem", "nccl"] = Field(
        "filesystem",
        description="How the trainer's weights reach the sidecar: safetensors on a shared filesystem, reloaded in "
        "place (any cluster, CPU too), or NCCL broadcast through vLLM's weight-transfer routes (GPU clusters: the "
        "trainer and the sidecar on GPUs, the sidecar one engine of tensor_parallel GPUs).",
    )


class RlvrStage(StageBase):
    """RL with verifiable rewards (GRPO), trainer and vLLM sidecar on separate GPUs."""

    kind: Literal["rlvr"] = Field(description="Stage kind.")
    prompts: DatasetRef = Field(description="Prompts with verifiable answers.")
    grpo: Grpo = Field(description="GRPO settings.")
    rewards: list[Reward] = Field(min_length=1, description="Weighted verifiers.")
    async_: AsyncSpec = Field(default_factory=AsyncSpec, alias="async", description="Asynchrony settings.")
    rollout: Rollout = Field(description="The rollout sidecar.")
    controls: list[Literal["random_reward"]] = Field(
        default_factory=list, description="Control runs: random_reward reruns the stage with random rewards."
    )


Stage = Annotated[
    PretrainStage | MidtrainStage | LongContextStage | SftStage | DpoStage | RlvrStage,
    Field(discriminator="kind"),
]
STAGE_MODELS: tuple[type[StageBase], ...] = get_args(get_args(Stage)[0])
STAGE_KINDS: tuple[str, ...] = tuple(get_args(m.model_fields["kind"].annotation)[0] for m in STAGE_MODELS)
