"""Toy world build and CLI: generate, train the tokenizer, count tokens, print a summary.

    python -m runtime.toyworld OUT_DIR [--seed 0] [--scale 1.0] [--vocab-size 1024]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from runtime.toyworld.settings import PRETRAIN_SOURCES
from runtime.toyworld.sets import generate, write_manifest


# --------------------------------------------------------------------------- tokenizer and CLI

def tokenizer_files(out_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """The files the tokenizer trains on: the pretraining sources' train splits, in a fixed order."""
    return [Path(out_dir) / manifest["sets"][name]["files"]["train"] for name in PRETRAIN_SOURCES]


def add_token_counts(out_dir: Path, manifest: dict[str, Any], tokenizer_dir: Path) -> dict[str, Any]:
    """Fill per-split token counts into the manifest (and manifest.json) with the trained tokenizer."""
    from runtime.tokenizer import count_tokens, load_tokenizer

    out_dir = Path(out_dir)
    for entry in manifest["sets"].values():
        entry["tokens"] = {split: count_tokens(tokenizer_dir, [out_dir / rel])
                           for split, rel in entry["files"].items()}
    manifest["tokenizer"] = {"path": Path(tokenizer_dir).relative_to(out_dir).as_posix()
                             if Path(tokenizer_dir).is_relative_to(out_dir) else str(tokenizer_dir),
                             "vocab_size": load_tokenizer(tokenizer_dir).get_vocab_size()}
    write_manifest(out_dir, manifest)
    return manifest


def build(out_dir: Path, *, seed: int = 0, scale: float = 1.0, vocab_size: int = 1024) -> dict[str, Any]:
    """Everything the CLI does: generate, train the tokenizer into out_dir/tokenizer, count tokens."""
    manifest = generate(out_dir, seed=seed, scale=scale)
    from runtime.tokenizer import train_tokenizer  # needs `tokenizers`; generating does not

    tokenizer_dir = train_tokenizer(tokenizer_files(out_dir, manifest), Path(out_dir) / "tokenizer", vocab_size)
    return add_token_counts(out_dir, manifest, tokenizer_dir)


def summary(manifest: dict[str, Any]) -> str:
    """A table: set, split, documents, characters, tokens."""
    rows = [("set", "split", "docs", "chars", "tokens")]
    for name, entry in manifest["sets"].items():
        for split in entry["files"]:
            tokens = entry.get("tokens", {}).get(split)
            rows.append((name, split, f"{entry['documents'][split]:,}", f"{entry['characters'][split]:,}",
                         "?" if tokens is None else f"{tokens:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m runtime.toyworld", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the toy world into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0), default 0")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies document counts, default 1.0")
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary size, default 1024")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0 (got {args.seed})")
    if not (math.isfinite(args.scale) and 0 < args.scale <= 100):
        parser.error(f"--scale must be in (0, 100] (got {args.scale})")
    if not 261 <= args.vocab_size <= 1 << 20:
        parser.error(f"--vocab-size must be in [261, {1 << 20}] (got {args.vocab_size})")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        parser.error(f"{args.out_dir} exists and is not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start = time.perf_counter()
    try:
        manifest = build(args.out_dir, seed=args.seed, scale=args.scale, vocab_size=args.vocab_size)
    except (OSError, ValueError) as e:
        print(f"python -m runtime.toyworld: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"python -m runtime.toyworld: error: training the tokenizer needs the runtime "
              f"dependencies (pip install -e '.[runtime]'): {e}", file=sys.stderr)
        return 1
    print(summary(manifest))
    print(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s (seed {args.seed}, scale {args.scale})")
    return 0


