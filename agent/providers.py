"""Chat models by one spec string: `openai:<model>`, `anthropic:<model>`,
`openai-compatible:<base-url>#<model>`, `offline`. Keys come from the environment only
(OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENAI_COMPATIBLE_API_KEY); base URLs from
OPENAI_BASE_URL / ANTHROPIC_BASE_URL are honoured by the SDKs. The SDKs retry timeouts,
429 and 5xx with exponential backoff (`max_retries`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from tools.errors import BackendError, ParameterError

DEFAULT_OPENAI = "gpt-4o-mini"
DEFAULT_ANTHROPIC = "claude-3-5-haiku-latest"


@dataclass(frozen=True)
class ModelSpec:
    provider: str  # openai | anthropic | openai-compatible | offline
    model: str = ""
    base_url: str | None = None

    def __str__(self) -> str:
        if self.provider == "offline":
            return "offline"
        if self.provider == "openai-compatible":
            return f"openai-compatible:{self.base_url}#{self.model}"
        return f"{self.provider}:{self.model}"


def default_spec() -> str:
    """$TISSUETALK_MODEL, else a provider whose key is set, else `offline`."""
    if os.environ.get("TISSUETALK_MODEL"):
        return os.environ["TISSUETALK_MODEL"]
    if os.environ.get("OPENAI_API_KEY"):
        return f"openai:{DEFAULT_OPENAI}"
    if os.environ.get("ANTHROPIC_API_KEY"):
        return f"anthropic:{DEFAULT_ANTHROPIC}"
    return "offline"


def parse_spec(spec: str | None) -> ModelSpec:
    spec = (spec or default_spec()).strip()
    if spec == "offline":
        return ModelSpec("offline")
    provider, _, rest = spec.partition(":")
    if provider in ("openai", "anthropic") and rest:
        return ModelSpec(provider, rest)
    if provider == "openai-compatible":
        url, _, model = rest.rpartition("#")
        if url.startswith(("http://", "https://")) and model:
            return ModelSpec(provider, model, url)
    raise ParameterError(
        f"model spec '{spec}' not understood; use openai:<model>, anthropic:<model>, "
        "openai-compatible:<base-url>#<model> or offline")


def make_chat_model(spec: ModelSpec, *, max_retries: int = 3, timeout: float = 120.0,
                    max_tokens: int = 2048):
    """The LangChain chat model for `spec` (None for offline)."""
    if spec.provider == "offline":
        return None
    if spec.provider == "openai":
        if not os.environ.get("OPENAI_API_KEY"):
            raise BackendError("OPENAI_API_KEY is not set (use --model offline to work without a key)")
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(model=spec.model, max_retries=max_retries, timeout=timeout,
                          max_tokens=max_tokens, temperature=0)
    if spec.provider == "anthropic":
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise BackendError("ANTHROPIC_API_KEY is not set (use --model offline to work without a key)")
        from langchain_anthropic import ChatAnthropic

        kw = {}
        if os.environ.get("ANTHROPIC_BASE_URL"):
            kw["base_url"] = os.environ["ANTHROPIC_BASE_URL"]
        return ChatAnthropic(model=spec.model, max_retries=max_retries, timeout=timeout,
                             max_tokens=max_tokens, temperature=0, **kw)
    from langchain_openai import ChatOpenAI

    key = os.environ.get("OPENAI_COMPATIBLE_API_KEY", "not-needed")
    # llama.cpp ignores max_completion_tokens; max_tokens in the body is understood everywhere
    return ChatOpenAI(model=spec.model, base_url=spec.base_url, api_key=key,
                      max_retries=max_retries, timeout=timeout, temperature=0,
                      extra_body={"max_tokens": max_tokens})


def describe_provider_error(e: Exception) -> str | None:
    """A clear one-line message for a provider failure (after the SDK's retries), or None."""
    name = " ".join(c.__name__ for c in type(e).__mro__)
    mods = [c.__module__ or "" for c in type(e).__mro__]
    if not any(m.startswith(("openai", "anthropic", "httpx", "httpcore")) for m in mods):
        return None
    status = getattr(e, "status_code", None)
    if "Timeout" in name:
        what = "timed out"
    elif "Connection" in name:
        what = "could not be reached"
    elif status == 429:
        what = "kept refusing with 429 (rate limit)"
    elif status is not None and status >= 500:
        what = f"kept failing with a server error ({status})"
    elif status in (401, 403):
        what = f"rejected the credentials ({status}); check the API key in the environment"
    elif status is not None:
        what = f"rejected the request ({status})"
    else:
        what = f"failed ({type(e).__name__})"
    return f"the model provider {what} after retries; no answer from the model"
