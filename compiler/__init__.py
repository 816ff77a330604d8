"""The recipe compiler: load, validate, resolve, estimate, plan, render, diff.

Never imports torch, vLLM, datasets, lightgbm or submitit (tests/compiler/test_imports.py).
"""
