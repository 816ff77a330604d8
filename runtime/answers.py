"""The final answer of a reply in the toy world's format: the text after the last "Answer:" (else the whole reply).

Shared by the in-house exact match (runtime.answer_eval), the math verifier (runtime.rewards) and, as a regex, the
tiny recipe's lm-eval task files (recipes/evals/toy_arith.yaml); kept free of torch so the verifiers import fast.
"""
from __future__ import annotations

ANSWER_MARK = "Answer:"


def answer_of(reply: str) -> str:
    return (reply.rsplit(ANSWER_MARK, 1)[-1] if ANSWER_MARK in reply else reply).strip()
