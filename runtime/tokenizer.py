"""The tiny recipe's tokenizer: a byte-level BPE trained locally with the `tokenizers` library.

`train_tokenizer(files, out_dir, vocab_size)` writes a folder that loads offline in
torchtitan's `HuggingFaceTokenizer` (tokenizer.json + tokenizer_config.json) and in
transformers' `AutoTokenizer` / vLLM (`tokenizer_class: PreTrainedTokenizerFast`,
special_tokens_map.json):

- byte-level BPE (every byte is in the vocabulary: no unknown tokens, exact round trips), digits
  split one per token (the arithmetic skill needs them), GPT-2 style word splitting;
- special tokens `<|bos|>` `<|eos|>` `<|pad|>` `<|user|>` `<|assistant|>` with ids 0-4;
- exactly `vocab_size` entries: if the corpus is too small for that many merges, the rest are
  filled with unused `<|reserved_N|>` special tokens;
- no automatic BOS/EOS (`add_bos_token`/`add_eos_token` false, no template post-processor): the
  data loaders add them;
- the chat template renders a conversation as one whole sequence,
  `<|bos|><|user|>QUESTION\n<|assistant|>ANSWER<|eos|>`, and with `add_generation_prompt` ends
  in `<|assistant|>`. `render_chat` is the same rendering in plain Python.

Training is deterministic: the same files in the same order give the same tokenizer.json.
Run it on its own with

    python -m runtime.tokenizer OUT_DIR FILE.jsonl [FILE.jsonl ...] [--vocab-size 1024]

(`python -m runtime.toyworld OUT` trains it on the toy world's pretraining train splits).
Needs only `tokenizers` and the standard library.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD, USER, ASSISTANT = "<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, USER, ASSISTANT)
DEFAULT_MODEL_MAX_LENGTH = 512
_BATCH = 1000

CHAT_TEMPLATE = (
    "{{- '" + BOS + "' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '" + USER + "' + message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT + "' + message['content'] + '" + EOS + "' -}}"
    "{%- else -%}"
    "{{- raise_exception('unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
)


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """What CHAT_TEMPLATE renders, in plain Python."""
    parts = [BOS]
    for message in messages:
        if message["role"] == "user":
            parts.append(USER + message["content"] + "\n")
        elif message["role"] == "assistant":
            parts.append(ASSISTANT + message["content"] + EOS)
        else:
            raise ValueError(f"unsupported role: {message['role']}")
    if add_generation_prompt:
        parts.append(ASSISTANT)
    return "".join(parts)


def record_text(record: dict[str, Any]) -> str:
    """The text of a dataset record: `text`, the rendered `messages`, else `prompt` or `question`."""
    if "text" in record:
        return record["text"]
    if "messages" in record:
        return render_chat(record["messages"])
    return record.get("prompt") or record.get("question") or ""


def iter_texts(files: Iterable[Path]) -> Iterator[str]:
    """Texts of the files in order: one per JSON line for .jsonl, one per line otherwise."""
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                yield record_text(json.loads(line)) if str(path).endswith(".jsonl") else line.rstrip("\n")


def _batches(texts: Iterable[str], size: int = _BATCH) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _fill_to(tok: Tokenizer, vocab_size: int) -> None:
    """Pad a short vocabulary (tiny corpus) with unused reserved special tokens."""
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True, normalized=False)
                                for i in range(missing)])


def _token_entry(token: str) -> dict[str, Any]:
    return {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def _write_configs(tok: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    added = sorted((tok.token_to_id(t.content), t.content) for t in tok.get_added_tokens_decoder().values())
    extra = [USER, ASSISTANT]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
        "additional_special_tokens": extra,
        "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): _token_entry(t) for i, t in added},
    }
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": extra}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")


def train_tokenizer(files: list[Path], out_dir: Path, vocab_size: int = 1024, *,
                    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> Path:
    """Train the byte-level BPE on the files' texts and save it into out_dir (returned)."""
    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    if not files:
        raise ValueError("train_tokenizer: no files to train on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(_batches(iter_texts(files)), trainer=trainer)
    _fill_to(tok, vocab_size)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"trained vocabulary has {tok.get_vocab_size()} entries, expected {vocab_size}")
    tok.save(str(out_dir / "tokenizer.json"))
    _write_configs(tok, out_dir, model_max_length)
    return out_dir


def load_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))


def count_tokens(tokenizer_dir: Path, files: Iterable[Path]) -> int:
    """Tokens in the files' texts (see `record_text`), without BOS/EOS."""
    tok = load_tokenizer(tokenizer_dir)
    total = 0
    for batch in _batches(iter_texts(files), 4 * _BATCH):
        total += sum(len(e.ids) for e in tok.encode_batch_fast(batch, add_special_tokens=False))
    return total


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m runtime.tokenizer", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"{parser.prog}: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        out = train_tokenizer(args.files, args.out_dir, args.vocab_size)
    except (ValueError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({load_tokenizer(out).get_vocab_size()} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
