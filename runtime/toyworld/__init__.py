"""The toy world: a deterministic generator of the tiny recipe's local datasets.

Four pretraining sources with distinct skills (so the data mix matters and learning is measurable
on a CPU), plus the post-training sets and a held-out arithmetic eval:

    <out>/arithmetic/{train,validation}.jsonl   {"text"}: a problem, worked steps, "Answer: N"
    <out>/words/{train,validation}.jsonl        {"text"}: numbers <-> English number words, counting
    <out>/code/{train,validation}.jsonl         {"text"}: tiny Python functions (valid syntax) and
                                                a call whose printed value is given in a comment
    <out>/text/{train,validation}.jsonl         {"text"}: simple templated English paragraphs
    <out>/sft/{train,validation}.jsonl          {"messages": [user question, assistant solution]}
    <out>/prompts/{train,validation}.jsonl      {"prompt", "answer"}: prompts the teacher answers for the
                                                student's SFT (distillation)
    <out>/rl/{train,validation}.jsonl           {"prompt", "answer"}: verifiable arithmetic (RLVR)
    <out>/pairs/{train,validation}.jsonl        {"prompt", "chosen", "rejected", "answer"}: preference
                                                pairs (chosen: the worked solution; rejected: a weak
                                                model's slip, never the right answer) for DPO
    <out>/eval/arith.jsonl                      {"question", "prompt", "answer", "op"}: held out
    <out>/manifest.json                         per set: files, documents, characters (tokens
                                                once the tokenizer is trained), seed and scale

Conventions: answers are decimal integer strings; every worked solution ends with the line
"Answer: N". An eval record's `question` is the chat user message (as in sft/rl/prompts) and its
`prompt` the raw-text prefix a base model continues, in the pretraining format ("Question: ...\n").
Held-out data: validation never shares a document with train (arithmetic-based sets: never the
same problem), and no eval problem appears in any other set.

Determinism: same seed and scale give byte-identical files. Every (set, split) draws from its own
`random.Random(seed * 1000 + offset)` (distinct offsets below 1000, so seeds >= 0 never share a
stream); nothing uses the global RNG or the iteration order of a set or of an unsorted mapping.
`scale` multiplies every document count (the tests use 0.01).

Run it (generates the data, trains the tokenizer into OUT_DIR/tokenizer, counts tokens):

    python -m runtime.toyworld OUT_DIR [--seed 0] [--scale 1.0] [--vocab-size 1024]

This module needs only the standard library; training the tokenizer (`build`, the CLI) needs the
`tokenizers` package (runtime/tokenizer.py).
"""
from __future__ import annotations

from runtime.toyworld.settings import EVAL_DOCS, MANIFEST_VERSION, MIN_DOCS, PRETRAIN_SOURCES, SEED_STRIDE, TRAIN_DOCS, VALIDATION_FRACTION, rng_for
from runtime.toyworld.numbers import number_to_words, random_number, word_components
from runtime.toyworld.arithmetic import Draw, Problem, arithmetic_doc, question, random_problem, raw_prompt, solution
from runtime.toyworld.prose import code_doc, text_doc, words_doc, words_question
from runtime.toyworld.sets import SETS, doc_counts, draw_unique, generate, make_splits, record_chars, write_jsonl, write_manifest
from runtime.toyworld.cli import add_token_counts, build, main, summary, tokenizer_files

__all__ = ['Draw', 'EVAL_DOCS', 'MANIFEST_VERSION', 'MIN_DOCS', 'PRETRAIN_SOURCES', 'Problem', 'SEED_STRIDE', 'SETS', 'TRAIN_DOCS', 'VALIDATION_FRACTION', 'add_token_counts', 'arithmetic_doc', 'build', 'code_doc', 'doc_counts', 'draw_unique', 'generate', 'main', 'make_splits', 'number_to_words', 'question', 'random_number', 'random_problem', 'raw_prompt', 'record_chars', 'rng_for', 'solution', 'summary', 'text_doc', 'tokenizer_files', 'word_components', 'words_doc', 'words_question', 'write_jsonl', 'write_manifest']
