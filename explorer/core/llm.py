"""A client for OpenAI-compatible chat endpoints (autointerp labels, the LLM refusal judge).

It works with vLLM, llama.cpp's server, Ollama and hosted APIs, with the standard library only
(`urllib.request`): one POST per request, bounded retries with exponential backoff on
429 and 5xx answers and on timeouts, and errors that name the endpoint and say what to do. The API key is
read from an environment variable, sent only when that variable is set, and never logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://localhost:8000/v1"
"""vLLM's default; Ollama serves `http://localhost:11434/v1`, llama.cpp's server `http://localhost:8080/v1`."""
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
SERVERS_HINT = (
    "vLLM: http://localhost:8000/v1, Ollama: http://localhost:11434/v1, llama.cpp: http://localhost:8080/v1"
)
Messages = list[dict[str, str]]
"""Chat messages: `[{"role": "system" | "user" | "assistant", "content": ...}, ...]`."""


class LLMError(ValueError):
    """The endpoint cannot be used: unreachable, refusing the key, not OpenAI-compatible, or failing
    after every retry. The message names the endpoint."""


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to reach the labelling model.

    Attributes:
        endpoint: the API base URL, up to and including `/v1` (`/chat/completions` is appended).
        model: the served model name; "" asks the endpoint's `/models` for its first model.
        api_key_env: environment variable holding the API key (sent as `Authorization: Bearer`).
        timeout_s: seconds to wait for one answer.
        max_retries: further attempts after a 429/5xx answer or a timeout.
        backoff_s: the first wait before a retry; each later wait doubles (a `Retry-After` header wins,
            up to `max_backoff_s`).
        max_backoff_s: the longest wait between attempts.
    """

    endpoint: str = DEFAULT_ENDPOINT
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LLMError(f"endpoint {self.endpoint!r} is not an http(s) URL such as {DEFAULT_ENDPOINT}")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise LLMError("timeout_s must be > 0; max_retries, backoff_s and max_backoff_s must be >= 0")
        if not self.api_key_env.strip():
            raise LLMError("api_key_env must name an environment variable")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def provider(self) -> str:
        """The endpoint's host and port (no credentials), e.g. `localhost:11434`."""
        return urlsplit(self.endpoint).netloc.rpartition("@")[2]


class ChatClient:
    """Send chat requests to one OpenAI-compatible endpoint.

    Args:
        config: the endpoint, model, key variable, timeout and retry policy.
        sleep: how to wait between retries (tests pass a recorder).
    """

    def __init__(self, config: EndpointConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self._base = config.endpoint.rstrip("/")
        self.model = config.model

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.config.api_key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, path: str, body: dict[str, Any] | None) -> Any:
        """One JSON request with retries; the decoded JSON answer."""
        url = f"{self._base}{path}"
        data = None if body is None else json.dumps(body).encode()
        attempts = self.config.max_retries + 1
        raw = b""
        for attempt in range(attempts):
            request = urllib.request.Request(url, data=data, headers=self._headers())
            wait = min(self.config.backoff_s * 2**attempt, self.config.max_backoff_s)
            last = attempt == attempts - 1
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace").strip()
                if e.code not in RETRY_STATUSES or last:
                    raise self._http_error(url, e.code, detail) from None
                after = e.headers.get("Retry-After", "") if e.headers else ""
                if after.replace(".", "", 1).isdigit():
                    wait = min(float(after), self.config.max_backoff_s)
                said = f"answered {e.code}"
            except (TimeoutError, urllib.error.URLError, OSError) as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                if not isinstance(reason, TimeoutError):
                    raise LLMError(self._unreachable(url, reason)) from None
                if last:
                    raise LLMError(
                        f"{url} did not answer within {self.config.timeout_s:g} s ({attempts} attempts); "
                        "raise --timeout or use a smaller model"
                    ) from None
                said = "timed out"
            log.warning("%s %s; retry %d/%d in %.1f s", url, said, attempt + 1, attempts - 1, wait)
            self._sleep(wait)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = raw[:200].decode("utf-8", "replace")
            raise LLMError(
                f"{url} did not answer JSON (is it an OpenAI-compatible /v1 URL?): {snippet!r}"
            ) from None

    def _http_error(self, url: str, code: int, detail: str) -> LLMError:
        if code in (401, 403):
            key_set = bool(os.environ.get(self.config.api_key_env, "").strip())
            hint = (
                f"the key in ${self.config.api_key_env} was refused"
                if key_set
                else f"set the API key in ${self.config.api_key_env} (or name another with --api-key-env)"
            )
            return LLMError(f"{url} refused the request ({code}): {hint}. Server said: {detail!r}")
        if code == 404:
            return LLMError(
                f"{url} was not found (404): the endpoint should be the API base ending in /v1 "
                f"({SERVERS_HINT}), and the model must be one it serves. Server said: {detail!r}"
            )
        return LLMError(f"{url} answered HTTP {code}: {detail!r}")

    def _unreachable(self, url: str, reason: Any) -> str:
        said = "connection refused" if isinstance(reason, ConnectionRefusedError) else str(reason)
        return f"cannot reach {url}: {said}. Is the server running? Typical endpoints: {SERVERS_HINT}"

    def models(self) -> list[str]:
        """The model names the endpoint serves (its `GET /models`).

        Raises:
            LLMError: the endpoint is unusable or does not list models.
        """
        data = self._request("/models", None)
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError) as e:
            raise LLMError(f"{self._base}/models did not list models as OpenAI does ({e}); pass --llm") from e

    def resolve_model(self) -> str:
        """The configured model, else the first one the endpoint serves (remembered for later requests)."""
        if not self.model:
            served = self.models()
            if not served:
                raise LLMError(f"{self._base}/models lists no model; pass --llm NAME")
            self.model = served[0]
            log.info("labelling with %s, the first model %s serves", self.model, self._base)
        return self.model

    def complete(self, messages: Messages, max_tokens: int) -> str:
        """The assistant's reply to `messages` (temperature 0); "" when the reply has no text.

        Raises:
            LLMError: the endpoint is unusable, or its answer is not a chat completion.
        """
        body = {
            "model": self.resolve_model(),
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        data = self._request("/chat/completions", body)
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise LLMError(
                f"{self._base}/chat/completions answered without choices[0].message ({e}): "
                f"{str(data)[:200]!r}"
            ) from e
        return content if isinstance(content, str) else ""
