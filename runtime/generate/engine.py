"""Every prompt answered once, concurrently, each finished prompt stored as it finishes (`ResultStore`).

A prompt already in the store (a resumed job) is skipped. The first request that fails for good stops new
submissions; requests in flight finish and are stored, then the failure is raised: a rerun of the job asks only
for what is missing.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from runtime.generate.client import ChatClient
from runtime.generate.store import ResultStore


@dataclass(frozen=True)
class Sampling:
    n: int
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    seed: int | None = 0

    @classmethod
    def of(cls, block: Mapping[str, Any], n: int = 1) -> Sampling:
        return cls(n=n, max_tokens=int(block["max_tokens"]), temperature=float(block.get("temperature", 0.7)),
                   top_p=float(block.get("top_p", 1.0)), seed=int(block.get("seed", 0)))


ENDPOINT_CONCURRENCY = 16


def concurrency_for(block: Mapping[str, Any], n: int, served: bool) -> int:
    """Requests in flight: the block's `concurrency`, else for a served model enough that its engine always has
    work queued when a request finishes (1.5 x max_num_seqs sequences), else ENDPOINT_CONCURRENCY."""
    if block.get("concurrency"):
        return int(block["concurrency"])
    if not served:
        return ENDPOINT_CONCURRENCY
    return max(1, -(-3 * int(block.get("max_num_seqs", 256)) // (2 * n)))


def generate_all(client: ChatClient, prompts: Sequence[list[dict[str, str]]], store: ResultStore, sampling: Sampling,
                 *, concurrency: int, log: Callable[[str], object] = print, label: str = "") -> dict[str, Any]:
    """Answer every prompt not yet in `store`; returns timing figures."""
    todo = [i for i in range(len(prompts)) if not store.done(i)]
    started = time.perf_counter()
    stop = threading.Event()
    lock = threading.Lock()
    finished = [0]
    step = max(1, len(todo) // 10)

    def one(index: int) -> None:
        if stop.is_set():
            return
        seed = None if sampling.seed is None else sampling.seed + index
        replies = client.complete(prompts[index], n=sampling.n, max_tokens=sampling.max_tokens,
                                  temperature=sampling.temperature, top_p=sampling.top_p, seed=seed)
        store.add({"index": index, "replies": [{"text": r.text, "finish_reason": r.finish_reason, "tokens": r.tokens}
                                               for r in replies]})
        with lock:
            finished[0] += 1
            if finished[0] % step == 0:
                log(f"{label}: {finished[0]}/{len(todo)} prompts ({time.perf_counter() - started:.0f} s)")

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="generate") as pool:
        futures: list[Future[None]] = [pool.submit(one, i) for i in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            for f in futures:
                f.cancel()
            wait(futures)
            raise failed[0].exception()  # type: ignore[misc]
    seconds = time.perf_counter() - started
    return {"asked": len(todo), "resumed": store.resumed, "seconds": round(seconds, 2), "retries": client.retried}
