"""The generation jobs (runtime/generate/) against an OpenAI-compatible endpoint that fails on cue.

The endpoint here is a small HTTP server in the test: an external API is exactly what the recipe's `endpoint`
generator talks to, and only a server under the test's control can fail or hang at a chosen request. Its replies
are a function of the prompt, so every filter's count is known in advance. The vLLM path (a stage served by the
job itself) runs in the pipeline test and `bench/datagen.py`.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from runtime.generate.client import ChatClient, EndpointFailed
from runtime.generate.delta import run_delta_pairs
from runtime.generate.distill import run_distill
from runtime.generate.engine import Sampling, generate_all
from runtime.generate.store import ResultStore

QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


class Endpoint:
    """Replies "<a> + <b> = <a+b>\\nAnswer: <a+b>" (model "strong") or the answer plus one (model "weak");
    prompt 3's replies are all the same text (exact duplicates); `fail_from` makes every request for a prompt
    index >= it answer 503; `hang_on` makes requests for that prompt sleep past the client's timeout."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_from: int | None = None
        self.fail_times = 0  # the next N requests answer 500, whatever the prompt
        self.hang_on: int | None = None
        self.hang_s = 3.0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = endpoint.answer(body, self.headers.get("Authorization"))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: dict[str, Any], auth: str | None) -> tuple[int, dict[str, Any]]:
        question = body["messages"][-1]["content"]
        a, b = (int(x) for x in QUESTION.search(question).groups())  # type: ignore[union-attr]
        index = a  # the tests' prompts are "What is <index> + <b>?"
        with self.lock:
            self.requests.append({"index": index, "model": body["model"], "auth": auth, "seed": body.get("seed")})
            if self.fail_times > 0:
                self.fail_times -= 1
                return 500, {"error": "transient"}
        if self.fail_from is not None and index >= self.fail_from:
            return 503, {"error": "overloaded"}
        if self.hang_on == index:
            time.sleep(self.hang_s)
        right = a + b
        value = right if body["model"] == "strong" else right + 1
        choices = []
        for k in range(body["n"]):
            steps = f"{a} + {b} = {value}" + ("" if index == 3 else f" (try {k})")
            choices.append({"index": k, "message": {"role": "assistant", "content": f"{steps}\nAnswer: {value}"},
                            "finish_reason": "stop"})
        return 200, {"choices": choices, "usage": {"completion_tokens": 12 * body["n"]}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def write_prompts(path: Path, n: int) -> Path:
    rows = [{"prompt": f"What is {i} + {i % 7}?", "answer": str(i + i % 7 + (1 if i % 5 == 4 else 0))}
            for i in range(n)]  # every fifth reference answer is off by one: the strong model "fails" it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {i} + 1?"}]


# --------------------------------------------------------------------------- client, store, engine


def test_transient_errors_are_retried_and_client_errors_are_not(endpoint: Endpoint) -> None:
    client = ChatClient(endpoint.url, "strong", timeout=5, retries=3, backoff_s=0.01)
    endpoint.fail_times = 2
    replies = client.complete(messages(1), n=2, max_tokens=8, temperature=0.7, seed=5)
    assert [r.text for r in replies] == ["1 + 1 = 2 (try 0)\nAnswer: 2", "1 + 1 = 2 (try 1)\nAnswer: 2"]
    assert client.retried == 2 and len(endpoint.requests) == 3 and endpoint.requests[-1]["seed"] == 5
    endpoint.fail_times = 10
    with pytest.raises(EndpointFailed, match=r"failed after 4 attempts: HTTP 500"):
        client.complete(messages(1), n=1, max_tokens=8, temperature=0.7)


def test_a_hanging_request_times_out_and_is_retried(endpoint: Endpoint) -> None:
    endpoint.hang_on, endpoint.hang_s = 2, 1.5
    client = ChatClient(endpoint.url, "strong", timeout=0.5, retries=1, backoff_s=0.01)
    with pytest.raises(EndpointFailed, match="failed after 2 attempts: .*timed out"):
        client.complete(messages(2), n=1, max_tokens=8, temperature=0.7)
    assert [r["index"] for r in endpoint.requests] == [2, 2]


def test_the_api_key_comes_from_the_named_variable_and_never_shows(endpoint: Endpoint,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"url": endpoint.url, "model": "strong", "api_key_env": "RECIPE_TEST_KEY"}
    with pytest.raises(EndpointFailed, match="RECIPE_TEST_KEY is not set"):
        ChatClient.for_endpoint(spec)
    monkeypatch.setenv("RECIPE_TEST_KEY", "sk-secret")
    client = ChatClient.for_endpoint(spec, retries=0)
    client.complete(messages(1), n=1, max_tokens=8, temperature=0.0)
    assert endpoint.requests[-1]["auth"] == "Bearer sk-secret"
    endpoint.fail_times = 1
    with pytest.raises(EndpointFailed) as failed:
        client.complete(messages(1), n=1, max_tokens=8, temperature=0.0)
    assert "sk-secret" not in str(failed.value)


def test_a_torn_last_line_is_dropped_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "store.jsonl"
    path.write_text('{"index": 0, "replies": []}\n{"index": 1, "replies": []}\n{"index": 2, "repl')
    with ResultStore(path) as store:
        assert sorted(store.results) == [0, 1] and store.resumed == 2
        store.add({"index": 2, "replies": [{"text": "x"}]})
        with pytest.raises(ValueError, match="already stored"):
            store.add({"index": 1, "replies": []})
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_an_endpoint_that_goes_down_mid_run_loses_nothing_and_repeats_nothing(endpoint: Endpoint,
                                                                              tmp_path: Path) -> None:
    prompts = [messages(i) for i in range(40)]
    client = ChatClient(endpoint.url, "strong", timeout=5, retries=1, backoff_s=0.01)
    endpoint.fail_from = 25  # from prompt 25 on, the endpoint is down
    with ResultStore(tmp_path / "g.jsonl") as store, pytest.raises(EndpointFailed, match="HTTP 503"):
        generate_all(client, prompts, store, Sampling(n=2, max_tokens=8, temperature=0.7), concurrency=4)
    with ResultStore(tmp_path / "g.jsonl") as store:
        first = set(store.results)
        assert first and first <= set(range(25))  # what finished is stored; nothing past the outage
        endpoint.fail_from, asked_before = None, len(endpoint.requests)
        figures = generate_all(client, prompts, store, Sampling(n=2, max_tokens=8, temperature=0.7), concurrency=4)
        assert sorted(store.results) == list(range(40))
    asked_again = [r["index"] for r in endpoint.requests[asked_before:]]
    assert sorted(asked_again) == sorted(set(range(40)) - first)  # only the missing prompts, each once
    assert figures["asked"] == 40 - len(first) and figures["resumed"] == len(first)
    indices = [json.loads(line)["index"] for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert sorted(indices) == list(range(40))  # on disk: every prompt exactly once


# --------------------------------------------------------------------------- the jobs


def generation_job(tmp_path: Path, kind: str, block: dict[str, Any], models: dict[str, Any], tokenizer: Path,
                   decontam: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {("distill" if kind == "distill" else "delta"): block, "models": models,
                              "output": "sft" if kind == "distill" else "pairs",
                              "serve": {"gpus": 0, "max_model_len": 256, "environment": "inference-cpu"},
                              "tokenizer": str(tokenizer)}
    if decontam:
        config["decontamination"] = decontam
    return {"id": f"x-{kind}", "kind": kind, "hash": "h", "config": config, "recipe_dir": str(tmp_path)}


def block(prompts: Path, **extra: Any) -> dict[str, Any]:
    return {"prompts": {"path": str(prompts), "text_field": "prompt", "split": "train"}, "answer_field": "answer",
            "max_tokens": 32, "temperature": 0.7, "top_p": 1.0, "seed": 0, "concurrency": 4,
            "request_timeout": 5, "retries": 0, **extra}


def endpoint_ref(endpoint: Endpoint, model: str) -> dict[str, Any]:
    return {"kind": "endpoint", "url": endpoint.url, "model": model, "api_key_env": None}


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE (runtime.tokenizer, as the toy world trains) on text like the endpoint's replies."""
    from runtime.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    text = folder / "text.txt"
    text.write_text("\n".join(f"What is {a} + {b}? {a} + {b} = {a + b} (try {a % 4})\nAnswer: {a + b}"
                              for a in range(60) for b in range(7)))
    return train_tokenizer([text], folder / "tok", vocab_size=400)


def toy_tokens(folder: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def test_distill_filters_are_counted_and_a_failed_run_resumes(endpoint: Endpoint, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              toy_tokenizer: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 20)
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": "What is 7 + 0?"}) + "\n")  # prompt 7, word for word
    decontam = {"eval_sets": {"ev": {"path": str(evals), "text_field": "question"}}, "ngram": 13, "policy": "drop"}
    filters = {"verify_answers": True, "dedup": True, "dedup_threshold": 0.8, "max_length": 6,
               "over_length": "truncate"}
    job = generation_job(tmp_path, "distill", block(prompts, samples_per_prompt=3, filters=filters),
                         {"teacher": endpoint_ref(endpoint, "strong")}, toy_tokenizer, decontam)
    out = tmp_path / "out"
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(out))
    endpoint.fail_from = 12
    with pytest.raises(EndpointFailed):
        run_distill(job)
    assert not (out / "sft").exists() and not (out / "DONE.json").exists()  # nothing half-written
    endpoint.fail_from = None
    run_distill(job)
    done = json.loads((out / "DONE.json").read_text())
    counts = done["counts"]
    # 20 prompts x 3; prompts 4, 9, 14, 19 have a reference the teacher misses; prompt 3's three replies are one
    assert counts["generated"] == 60 and counts["wrong_answer"] == 12 and counts["exact_duplicates"] == 2
    assert counts["contaminated"] == 3  # prompt 7's three samples contain the eval question
    assert counts["kept"] == 60 - 12 - 2 - 3
    assert counts["over_length"] == 60 - 12 - 2  # every reply is over 6 tokens; cut before the eval-overlap check
    rows = [json.loads(line) for split in ("train", "validation") for line in (out / "sft" / f"{split}.jsonl").read_text().splitlines()]
    assert done["splits"] == {"train": 41, "validation": 2}  # every 20th sample held out
    assert len(rows) == counts["kept"] and all(r["messages"][0]["role"] == "user" for r in rows)
    assert all(len(toy_tokens(toy_tokenizer, r["messages"][1]["content"])) <= 6 for r in rows)
    assert {r["source"]["prompt"] for r in rows} == set(range(20)) - {4, 9, 14, 19, 7}
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["teacher"]["model"] == "strong" and provenance["sampling"]["samples_per_prompt"] == 3
    assert provenance["generation"]["resumed"] > 0  # the second run went on from the first
    # every prompt stored: a rerun (the filters changed, say) asks the endpoint nothing, even when it is down
    endpoint.fail_from, asked = 0, len(endpoint.requests)
    first = (out / "sft" / "train.jsonl").read_text()
    (out / "DONE.json").unlink()
    run_distill(job)
    assert len(endpoint.requests) == asked and (out / "sft" / "train.jsonl").read_text() == first


def test_delta_pairs_report_the_gap_and_keep_verified_chosen(endpoint: Endpoint, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             toy_tokenizer: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 20)
    job = generation_job(tmp_path, "delta_pairs", block(prompts, keep="chosen_beats_rejected"),
                         {"chosen": endpoint_ref(endpoint, "strong"), "rejected": endpoint_ref(endpoint, "weak")},
                         toy_tokenizer)
    out = tmp_path / "out"
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(out))
    run_delta_pairs(job)
    done = json.loads((out / "DONE.json").read_text())
    # strong is right except on every fifth prompt; weak (answer + 1) is right exactly there
    assert done["gap"] == {"chosen_accuracy": 0.8, "rejected_accuracy": 0.2, "gap": 0.6, "chosen_beats_rejected": 0.8}
    assert done["counts"]["kept"] == 16 and done["metrics"]["delta/gap"] == 0.6
    from runtime.dpo import pair_conversations

    rows = [json.loads(line) for line in (out / "pairs" / "train.jsonl").read_text().splitlines()]
    assert done["splits"] == {"train": 16, "validation": 0}  # under 20 pairs: nothing held out
    chosen, rejected = pair_conversations(rows[0])  # what the DPO stage reads
    assert chosen[0] == rejected[0] == {"role": "user", "content": "What is 0 + 0?"}
    assert chosen[1]["content"].endswith("Answer: 0") and rejected[1]["content"].endswith("Answer: 1")
    assert {r["model"] for r in endpoint.requests} == {"strong", "weak"}


def test_decontaminate_writes_drop_lists_the_loaders_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.generate.contamination import Contaminated
    from runtime.generate.decontam_job import run_decontaminate
    from runtime.lm_data import load_source

    long_item = "the quick brown fox jumps over the lazy dog while seven small cats watch from a red wooden fence"
    (tmp_path / "eval.jsonl").write_text(json.dumps({"q": long_item}) + "\n" + json.dumps({"q": "What is 12 + 30?"}) + "\n")
    source = tmp_path / "source"
    source.mkdir()
    texts = ["nothing to see here",
             "Intro. " + " ".join(long_item.split()[2:15]) + " and more",   # 13 words of the long item: overlap
             "Intro. " + " ".join(long_item.split()[2:14]) + " and more",   # 12 words: below n
             "Question: what is 12 + 30 ?\nAnswer: 42",                       # the short item, whole
             "What is 12 + 3?"]                                               # not it
    (source / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (source / "validation.jsonl").write_text(json.dumps({"text": texts[1]}) + "\n")
    config = {"eval_sets": {"ev": {"path": str(tmp_path / "eval.jsonl"), "text_field": "q"}}, "ngram": 13,
              "policy": "drop", "datasets": {"source-a": {"ref": {"path": str(source), "text_field": "text"},
                                                          "fields": ["text"], "read_by": ["pretrain"]}}}
    job = {"id": "decontaminate", "kind": "decontaminate", "config": config, "recipe_dir": str(tmp_path)}
    out = tmp_path / "out"
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(out))
    run_decontaminate(job)
    assert json.loads((out / "drop" / "source-a.json").read_text()) == [1, 3]
    report = json.loads((out / "report.json").read_text())["datasets"]["source-a"]
    assert report["contaminated"] == 2 and report["by_eval_set"] == {"ev": {"rows": 2, "items": 2}}
    # a consumer reading the source through the drop list (as `{from_job, file}` resolves under recipe launch)
    monkeypatch.setenv("RECIPE_INPUT_DECONTAMINATE", str(out))
    ref = {"path": str(source), "text_field": "text", "drop": {"from_job": "decontaminate", "file": "drop/source-a.json"}}
    assert list(load_source(ref)["text"]) == [texts[0], texts[2], texts[4]]
    assert len(load_source(ref, "validation")) == 1  # drop lists index the split that was checked, only
    # policy fail: the report is written, then the job fails with one line and no DONE.json
    failing = tmp_path / "fail"
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(failing))
    with pytest.raises(Contaminated, match=r"^decontaminate: source-a \(2 rows\) overlap the eval sets") as err:
        run_decontaminate({**job, "config": {**config, "policy": "fail"}})
    assert "\n" not in str(err.value) and (failing / "report.json").is_file() and not (failing / "DONE.json").exists()
