"""The recipe language: typed pydantic models for a training recipe.

`spec.recipe.Recipe` is the root. Nothing here imports torch, vLLM or datasets;
the compiler (`compiler/`) loads YAML into these models and resolves them into a plan.
"""
from spec.recipe import Recipe

__all__ = ["Recipe"]
