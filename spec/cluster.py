"""Where a recipe runs: this machine (`local`) or a Slurm cluster profile."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from spec.base import Fraction, PositiveFloat, PositiveInt, Spec

TimeLimit = Annotated[
    str,
    Field(pattern=r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$", description="Slurm time limit: [D-]HH:MM:SS."),
]


SlurmName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9_.,:+-]+$", max_length=128, description="A Slurm name: letters, digits and _.,:+-"),
]


class GpuSpec(Spec):
    """One accelerator type, with the numbers the estimates need."""

    type: str = Field(description="GPU model name, e.g. H100-80GB.")
    memory_gib: PositiveFloat = Field(description="Usable memory per GPU in GiB.")
    peak_tflops: PositiveFloat = Field(description="Dense bf16 peak TFLOP/s per GPU.")
    memory_bandwidth_gbps: PositiveFloat = Field(description="HBM bandwidth per GPU in GB/s (decode-time estimates).")


class LocalCluster(Spec):
    """This machine: CPU, or its GPUs when it has them. Jobs run with the local executor."""

    kind: Literal["local"] = Field(description="Cluster type.")
    name: str = Field("local", description="Profile name.")
    gpus: Annotated[int, Field(ge=0)] = Field(0, description="GPUs on this machine (0: CPU only).")
    gpu: GpuSpec | None = Field(None, description="GPU type when gpus > 0.")
    cpus: PositiveInt = Field(2, description="CPU cores available to jobs.")
    memory_gib: PositiveFloat = Field(16, description="Host memory available to jobs in GiB.")
    cpu_tflops: PositiveFloat = Field(0.05, description="Sustained fp32 TFLOP/s of the CPU (for time estimates).")
    cpu_memory_bandwidth_gbps: PositiveFloat = Field(20, description="Host memory bandwidth in GB/s (decode estimates).")
    mfu: Fraction = Field(0.3, description="Model FLOPs utilisation assumed for time estimates.")

    @model_validator(mode="after")
    def _gpu_type_with_gpus(self) -> "LocalCluster":
        if self.gpus > 0 and self.gpu is None:
            raise ValueError(f"gpus is {self.gpus}: give gpu (the GPU type, its memory and speed) too")
        return self


class SlurmCluster(Spec):
    """A Slurm cluster of identical GPU nodes."""

    kind: Literal["slurm"] = Field(description="Cluster type.")
    name: str = Field(description="Profile name.")
    gpu: GpuSpec = Field(description="GPU type of every node.")
    gpus_per_node: PositiveInt = Field(description="GPUs per node.")
    cpus_per_node: PositiveInt = Field(description="CPU cores per node.")
    memory_per_node_gib: PositiveFloat = Field(description="Host memory per node in GiB.")
    max_nodes: PositiveInt = Field(description="Most nodes one job may ask for.")
    partition: SlurmName | None = Field(None, description="Slurm partition (--partition).")
    account: SlurmName | None = Field(None, description="Slurm account (--account).")
    qos: SlurmName | None = Field(None, description="Slurm QoS (--qos).")
    time_limit: TimeLimit = Field("48:00:00", description="Longest time limit a job may ask for.")
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run before each job (module loads, container setup). They are code, run with eval "
        "exactly as the profile's author wrote them; nothing else from a recipe is ever executed.",
    )
    mfu: Fraction = Field(0.4, description="Model FLOPs utilisation assumed for GPU-hour estimates.")


Cluster = Annotated[LocalCluster | SlurmCluster, Field(discriminator="kind")]
