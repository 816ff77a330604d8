"""Toy world settings: document counts, split sizes and the per-(set, split) random streams."""
from __future__ import annotations

import random



MANIFEST_VERSION = 1
SEED_STRIDE = 1000
VALIDATION_FRACTION = 0.02
MIN_DOCS = 2
PRETRAIN_SOURCES = ("arithmetic", "words", "code", "text")

# Train documents per set at scale 1.0. The pretraining counts are calibrated so that the trained
# 1024-token BPE gives about the tiny recipe's declared tokens (arithmetic 2M, words 1M, code 1M,
# text 4M); the post-training counts cover the tiny recipe's steps several times over. The teacher's answers to
# `prompts` repeat often (exact duplicates) or are wrong: 8,000 prompts leave about 4,400 distinct verified traces
# for the student's SFT, where 2,000 left 1,200 (and a student that stayed near 0.4 on the held-out questions).
TRAIN_DOCS: dict[str, int] = {
    "arithmetic": 34_000,
    "words": 8_700,
    "code": 8_000,
    "text": 26_000,
    "sft": 8_000,
    "prompts": 8_000,
    "rl": 2_000,
    "pairs": 2_000,
}
EVAL_DOCS = 500
# Eval problems planted in one pretraining source on purpose, for the decontamination job to find.
PLANTED_SOURCE = "arithmetic"
PLANTED_EVAL_DOCS = 25

# RNG stream offsets: (set, split) -> offset below SEED_STRIDE.
_OFFSETS: dict[tuple[str, str], int] = {
    ("eval", "test"): 1,
    ("arithmetic", "validation"): 11, ("arithmetic", "train"): 12,
    ("words", "validation"): 21, ("words", "train"): 22,
    ("code", "validation"): 31, ("code", "train"): 32,
    ("text", "validation"): 41, ("text", "train"): 42,
    ("sft", "validation"): 51, ("sft", "train"): 52,
    ("prompts", "validation"): 61, ("prompts", "train"): 62,
    ("rl", "validation"): 71, ("rl", "train"): 72,
    ("pairs", "validation"): 81, ("pairs", "train"): 82,
    ("plant", "arithmetic"): 91,
}


def rng_for(seed: int, name: str, split: str) -> random.Random:
    """The private random stream of one (set, split)."""
    return random.Random(seed * SEED_STRIDE + _OFFSETS[(name, split)])


