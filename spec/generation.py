"""Post-training data generation: distillation (SFT data), delta pairs (DPO data), decontamination."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from spec.base import Fraction, Identifier, PositiveFloat, PositiveInt, Spec
from spec.data import DatasetRef

ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

ModelRef = Annotated[
    str,
    Field(
        min_length=1,
        description="An earlier stage's name, a Hugging Face model id (org/name) or a local checkpoint folder.",
    ),
]


class Endpoint(Spec):
    """An OpenAI-compatible chat-completions server that the plan does not start (an API, a shared vLLM)."""

    url: str = Field(pattern=r"^https?://\S+$", description="Base URL, e.g. https://api.example.com/v1.")
    model: str = Field(min_length=1, description="Model name the endpoint serves.")
    api_key_env: str | None = Field(
        None, pattern=ENV_VAR_PATTERN, description="Environment variable that holds the API key (never the key itself)."
    )


def _generator_kind(value: Any) -> str:
    return "[endpoint]" if isinstance(value, (dict, Endpoint)) else "[model]"


# A string is a model to serve, a mapping an endpoint: tagged so that a bad endpoint reports only its own errors
# (bracketed tags are left out of diagnostic paths, as pydantic's own "[key]" parts are).
Generator = Annotated[
    Annotated[ModelRef, Tag("[model]")] | Annotated[Endpoint, Tag("[endpoint]")],
    Discriminator(_generator_kind),
    Field(description="A model the plan serves with vLLM (stage, Hugging Face id or folder), or an endpoint."),
]


class GenerationSettings(Spec):
    """Sampling and serving settings shared by distillation and delta pairs."""

    prompts: DatasetRef = Field(description="Prompts (text_field: the prompt column).")
    answer_field: str | None = Field(
        None, description="Column with each prompt's reference answer, for verification (none: no answers)."
    )
    num_prompts: PositiveInt | None = Field(None, description="Prompts used, the first N (default all).")
    max_tokens: PositiveInt = Field(description="Most tokens per response.")
    temperature: Annotated[float, Field(ge=0)] = Field(0.7, description="Sampling temperature.")
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(1.0, description="Nucleus sampling.")
    seed: int = Field(0, description="Sampling seed (per prompt: seed + prompt index).")
    gpus: Annotated[int, Field(ge=0)] = Field(8, description="GPUs for the plan's vLLM engines (0 on CPU).")
    tensor_parallel: PositiveInt = Field(1, description="Tensor-parallel degree of each engine.")
    max_model_len: PositiveInt | None = Field(None, description="vLLM max model length (default the model's).")
    max_num_seqs: PositiveInt = Field(256, description="Sequences a served vLLM engine decodes at once.")
    concurrency: PositiveInt | None = Field(
        None,
        description="Requests in flight at once (default: for a served model enough to keep its engine full, "
        "1.5 x max_num_seqs / samples per request; for an endpoint 16).",
    )
    request_timeout: PositiveFloat = Field(600.0, description="Seconds one request may take before it is retried.")
    retries: Annotated[int, Field(ge=0)] = Field(5, description="Retries of a failed request before the job fails.")


class DistillFilters(Spec):
    """Which teacher samples are kept, and how long ones are cut."""

    verify_answers: bool = Field(False, description="Keep only samples whose final answer matches answer_field.")
    dedup: bool = Field(True, description="Drop exact and near-duplicate responses (MinHash over word 5-grams).")
    dedup_threshold: Fraction = Field(0.8, description="Jaccard similarity at which two responses are near-duplicates.")
    max_length: PositiveInt | None = Field(None, description="Most response tokens kept (longer: see over_length).")
    over_length: Literal["truncate", "drop"] = Field(
        "truncate", description="Longer responses are cut at max_length (truncated traces still teach) or dropped."
    )


class Distill(GenerationSettings):
    """Reasoning distillation: a teacher samples responses to seed prompts."""

    teacher: Generator
    samples_per_prompt: PositiveInt = Field(1, description="Responses sampled per prompt.")
    filters: DistillFilters = Field(default_factory=DistillFilters, description="Sample filters.")

    @model_validator(mode="after")
    def _answers_to_verify(self) -> "Distill":
        if self.filters.verify_answers and self.answer_field is None:
            raise ValueError("filters.verify_answers needs answer_field (the prompts' reference-answer column)")
        return self


class Delta(GenerationSettings):
    """Delta-learning pairs: chosen from a strong model, rejected from a weaker one."""

    chosen: Generator
    rejected: Generator
    keep: Literal["all", "chosen_correct", "chosen_beats_rejected"] = Field(
        "all",
        description="Pairs kept: all (identical responses always dropped), those whose chosen answer verifies, or "
        "those whose chosen verifies and rejected does not.",
    )

    @model_validator(mode="after")
    def _answers_to_verify(self) -> "Delta":
        if self.keep != "all" and self.answer_field is None:
            raise ValueError(f"keep: {self.keep} needs answer_field (the prompts' reference-answer column)")
        return self


class Decontamination(Spec):
    """N-gram overlap between every training dataset and the eval sets, checked before training."""

    eval_sets: dict[Identifier, DatasetRef] = Field(
        min_length=1, description="Eval sets (text_field: the column compared, e.g. the question)."
    )
    ngram: PositiveInt = Field(13, description="N of the word n-grams compared (shorter eval items: matched whole).")
    policy: Literal["drop", "fail", "report"] = Field(
        "drop", description="Contaminated training examples are dropped, fail the run, or are only reported."
    )
