"""Post-training data generation: distillation, delta pairs, dedup and decontamination.

The job entries import their modules lazily: `runtime.generate` itself stays cheap to import.
"""
from __future__ import annotations

from typing import Any


def run_distill(job: dict[str, Any]) -> None:
    from runtime.generate.distill import run_distill as run
    from runtime.generate.serving import run_serving_job

    run_serving_job(job, run)


def run_delta_pairs(job: dict[str, Any]) -> None:
    from runtime.generate.delta import run_delta_pairs as run
    from runtime.generate.serving import run_serving_job

    run_serving_job(job, run)


def run_decontaminate(job: dict[str, Any]) -> None:
    from runtime.generate.decontam_job import run_decontaminate as run

    run(job)
