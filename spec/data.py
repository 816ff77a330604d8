"""Data: named sources and the pretraining mix (fixed weights or a RegMix search)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from spec.base import Fraction, Identifier, PositiveFloat, PositiveInt, Spec
from spec.model import ModelSpec


class DatasetRef(Spec):
    """A dataset: a Hugging Face id or a local path (relative to the recipe file), never both."""

    hf: str | None = Field(None, description="Hugging Face dataset id, e.g. allenai/c4.")
    path: str | None = Field(None, description="Local file or folder, relative to the recipe file.")
    subset: str | None = Field(None, description="Dataset configuration (subset) name.")
    split: str = Field("train", description="Split to read.")
    text_field: str = Field("text", description="Column that holds the text (or the prompt, for prompt sets).")

    @model_validator(mode="after")
    def _exactly_one_location(self) -> "DatasetRef":
        if (self.hf is None) == (self.path is None):
            raise ValueError("give exactly one of hf (a Hugging Face dataset id) or path (a local path)")
        return self


class Source(DatasetRef):
    """A pretraining source with the number of tokens it holds."""

    tokens: PositiveInt = Field(description="Tokens available in this source (sets the prior and epoch limits).")
    eval_split: str | None = Field(None, description="Held-out split for per-source bits-per-byte.")


class FixedMix(Spec):
    """Fixed mixture weights, one per source, summing to 1."""

    kind: Literal["fixed"] = Field(description="Mix type.")
    weights: dict[str, Fraction] = Field(description="Weight per source name; must sum to 1.")


class ObjectiveTerm(Spec):
    """One weighted metric of the RegMix objective."""

    metric: str = Field(description="Metric name, <suite>/<task>/<metric>, e.g. paloma/c4_en/bpb.")
    weight: PositiveFloat = Field(description="Weight of this metric in the objective.")
    direction: Literal["minimize", "maximize"] = Field(description="Whether lower or higher is better.")


class ProxySpec(Spec):
    """The small models trained on each sampled mixture."""

    model: ModelSpec = Field(description="Proxy architecture (about 1M parameters in RegMix).")
    tokens: PositiveInt = Field(description="Training tokens per proxy.")
    seq_len: PositiveInt = Field(description="Proxy training sequence length.")
    global_batch_sequences: PositiveInt = Field(description="Proxy global batch in sequences.")
    micro_batch_size: PositiveInt | None = Field(
        None, description="Sequences per forward/backward pass; default the whole global batch."
    )
    lr: PositiveFloat = Field(description="Proxy peak learning rate.")
    gpus: Annotated[int, Field(ge=0)] = Field(1, description="GPUs per proxy run (0 on CPU).")


class SamplingSpec(Spec):
    """How swarm mixtures are drawn."""

    distribution: Literal["dirichlet"] = Field("dirichlet", description="Sampling distribution.")
    prior: Literal["tokens", "uniform"] = Field(
        "tokens", description="Centre of the Dirichlet: token-proportional or uniform."
    )
    temperature: PositiveFloat = Field(1.0, description="Prior temperature: weights ∝ tokens^(1/temperature).")
    concentration: tuple[PositiveFloat, PositiveFloat] = Field(
        (0.1, 5.0), description="Range of Dirichlet concentration strengths [low, high]."
    )


class RegressorSpec(Spec):
    """The regression from mixture weights to each metric."""

    kind: Literal["lightgbm"] = Field("lightgbm", description="Regressor.")
    learning_rate: PositiveFloat = Field(0.01, description="Boosting learning rate.")
    num_rounds: PositiveInt = Field(1000, description="Most boosting rounds.")
    num_leaves: PositiveInt = Field(31, description="Leaves per tree.")
    early_stopping_rounds: PositiveInt = Field(50, description="Stop when CV loss has not improved this long.")
    cv_folds: Annotated[int, Field(ge=2)] = Field(5, description="K of K-fold cross-validation.")


class SolverSpec(Spec):
    """How the fitted regressor is solved for the best mixture."""

    candidates: PositiveInt = Field(100_000, description="Mixtures sampled and scored.")
    top_k: PositiveInt = Field(128, description="The best k candidates are averaged.")


class Constraints(Spec):
    """Bounds on the solved (and sampled) mixtures."""

    min_weight: dict[str, Fraction] = Field(default_factory=dict, description="Least weight per source.")
    max_weight: dict[str, Fraction] = Field(default_factory=dict, description="Most weight per source.")
    max_epochs: PositiveFloat | None = Field(
        None, description="Most times a source may be repeated within the pretraining token budget."
    )


class RegMixSearch(Spec):
    """RegMix (arXiv 2407.01492): proxy swarm, LightGBM fit, constrained solve."""

    kind: Literal["regmix"] = Field(description="Mix type.")
    objective: list[ObjectiveTerm] = Field(min_length=1, description="Weighted metrics to optimise.")
    proxy: ProxySpec = Field(description="Proxy model and its training.")
    swarm_size: PositiveInt = Field(512, description="Number of proxy models (one array job).")
    seed: int = Field(0, description="Seed of the swarm sampling and the solve.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Mixture sampling.")
    regressor: RegressorSpec = Field(default_factory=RegressorSpec, description="Regression settings.")
    solver: SolverSpec = Field(default_factory=SolverSpec, description="Solve settings.")
    constraints: Constraints = Field(default_factory=Constraints, description="Mixture constraints.")


Mix = Annotated[FixedMix | RegMixSearch, Field(discriminator="kind")]


class DataSpec(Spec):
    """Pretraining sources and how they are mixed."""

    tokenizer: str | None = Field(
        None,
        description="Tokenizer of every model in the recipe: a Hugging Face id or a folder with tokenizer.json "
        "(relative to the recipe file). Needed to launch; its vocabulary must fit model.vocab_size.",
    )
    sources: dict[Identifier, Source] = Field(min_length=1, description="Named pretraining sources.")
    mix: Mix = Field(description="Fixed weights or a RegMix search.")
