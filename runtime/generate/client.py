"""An OpenAI-compatible chat-completions client with retries: the plan's own vLLM server or an external endpoint.

    client = ChatClient("http://127.0.0.1:8000", "policy", timeout=600, retries=5)
    replies = client.complete(messages, n=4, max_tokens=512, temperature=0.7, top_p=1.0, seed=17)

A connection error, a timeout, HTTP 429 or a 5xx answer is retried with exponential backoff (`retries` times); other
4xx answers are the request's fault and fail at once. Either way the failure is one line (`EndpointFailed`) naming
the endpoint, never the key. Standard library only.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class EndpointFailed(RuntimeError):
    """A request failed for good (after its retries, or at once for a client error); the message is one line."""


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str
    tokens: int | None


class ChatClient:
    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 600.0, retries: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0):
        base = url.rstrip("/")
        self.endpoint = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.retried = 0  # retries taken so far, over all requests (reported)

    @classmethod
    def for_endpoint(cls, spec: Mapping[str, Any], **kwargs: Any) -> ChatClient:
        """An external endpoint of the recipe: the key comes from the environment variable it names."""
        key = None
        if spec.get("api_key_env"):
            key = os.environ.get(spec["api_key_env"])
            if not key:
                raise EndpointFailed(f"endpoint {spec['url']}: environment variable {spec['api_key_env']} is not set")
        return cls(spec["url"], spec["model"], api_key=key, **kwargs)

    def complete(self, messages: Sequence[Mapping[str, str]], *, n: int, max_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[Reply]:
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "n": n, "max_tokens": max_tokens,
                                "temperature": temperature, "top_p": top_p}
        if seed is not None:
            body["seed"] = seed
        data = self._post(body)
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            replies = [Reply(c["message"].get("content") or "", c.get("finish_reason") or "", None) for c in choices]
        except (KeyError, TypeError, AttributeError):
            raise EndpointFailed(f"{self.endpoint}: unexpected answer (no choices[].message): {str(data)[:200]}") from None
        if len(replies) != n:
            raise EndpointFailed(f"{self.endpoint}: asked for {n} choices, got {len(replies)}")
        usage = data.get("usage") or {}
        if usage.get("completion_tokens") is not None and replies:
            per = usage["completion_tokens"] / len(replies)  # the API reports a total; kept as a mean per reply
            replies = [Reply(r.text, r.finish_reason, round(per)) for r in replies]
        return replies

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            request = urllib.request.Request(self.endpoint, data=payload, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200].replace("\n", " ")
                if exc.code not in RETRYABLE_STATUS:
                    raise EndpointFailed(f"{self.endpoint}: HTTP {exc.code}: {detail}") from None
                reason = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError,
                    json.JSONDecodeError) as exc:
                reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt >= self.retries:
                raise EndpointFailed(f"{self.endpoint}: failed after {attempt + 1} attempts: {reason}")
            attempt += 1
            self.retried += 1
            time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
