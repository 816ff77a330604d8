"""The root of a recipe file."""
from __future__ import annotations

from pydantic import Field

from spec.base import Identifier, Spec
from spec.cluster import Cluster
from spec.data import DataSpec
from spec.evals import EvalsSpec
from spec.generation import Decontamination
from spec.model import ModelSpec
from spec.stages import Stage


class Recipe(Spec):
    """A training recipe: model, data, the cluster it runs on, and an ordered list of stages."""

    name: Identifier = Field(description="Recipe name; the build and run folders are named after it.")
    description: str = Field("", description="Free text.")
    extends: str | None = Field(None, description="Base recipe file, relative to this one; this file overrides it.")
    cluster: Cluster = Field(description="A cluster profile name (local, h100-80gb) or an inline profile.")
    model: ModelSpec = Field(description="Model architecture.")
    data: DataSpec = Field(description="Pretraining sources and mix.")
    stages: list[Stage] = Field(min_length=1, description="Stages, in order.")
    evals: EvalsSpec | None = Field(None, description="Eval suites and when they run (none: no eval jobs).")
    decontamination: Decontamination | None = Field(
        None, description="Check every training dataset against eval sets before training (none: no check)."
    )
