"""The model-bearing routes the router serves, and which engine path serves each one per backend.

Sources (every row traces to the engine's own route table):
- llama-server b11312, tools/server/server.cpp:258-285: /v1/chat/completions, /v1/completions, /v1/responses (264),
  /v1/messages (268), /infill (269), /v1/embeddings (272), /v1/rerank (275), /tokenize (277), /detokenize (278),
  /v1/messages/count_tokens (285).
- vLLM: vllm/entrypoints/anthropic/api_router.py (/v1/messages, /v1/messages/count_tokens), the OpenAI server's
  /v1/responses, /v1/rerank (also /rerank, /v2/rerank), /tokenize, /detokenize.
- SGLang: python/sglang/srt/entrypoints/http_server.py: /v1/responses, /v1/rerank, /tokenize and /v1/tokenize,
  /detokenize and /v1/detokenize; no /v1/messages and no infill.
- TabbyAPI: OpenAI chat/completions/embeddings only (its tokenizer routes /v1/token/encode|decode take other bodies).
- backend `openai` (a remote OpenAI-compatible base URL): the OpenAI routes under its /v1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from router_app.config import Backend


class Kind(StrEnum):
    """How an endpoint's answer streams (and so how the router speaks inside that stream)."""

    CHAT = "chat"  # OpenAI chat.completion.chunk events, ends with data: [DONE]
    COMPLETIONS = "completions"  # OpenAI text_completion events, ends with data: [DONE]
    RESPONSES = "responses"  # OpenAI Responses API `event:` lines, ends with response.completed|failed|incomplete
    MESSAGES = "messages"  # Anthropic `event:` lines, ends with message_stop
    RAW = "raw"  # llama.cpp native stream (infill): relayed as is
    UNARY = "unary"  # never streams


_ALL = frozenset(Backend)
_LOCAL_OPENAI = frozenset({Backend.LLAMACPP, Backend.VLLM, Backend.SGLANG, Backend.OPENAI})
_ANTHROPIC = frozenset({Backend.LLAMACPP, Backend.VLLM})
_TOKENIZERS = frozenset({Backend.LLAMACPP, Backend.VLLM, Backend.SGLANG})


@dataclass(frozen=True)
class Endpoint:
    """One route: its engine path (under the engine's /v1 when it starts with /v1/, else its root)."""

    name: str  # metrics label, e.g. "chat/completions"
    upstream: str
    kind: Kind
    backends: frozenset[Backend]
    generates: bool = False  # per-model defaults/overrides/strip apply
    # Checked here, because llama-server b11312 answers 500 to these mistakes: keys that must be present with a
    # type, and keys that must have a type when present (measured: /v1/messages without messages, chat `tools`
    # not an array, /detokenize `tokens` not an array).
    required: tuple[tuple[str, type | tuple[type, ...]], ...] = ()
    typed: tuple[tuple[str, type | tuple[type, ...]], ...] = ()

    @property
    def anthropic(self) -> bool:
        return self.upstream.startswith("/v1/messages")

    def url(self, openai_base: str, root: str) -> str:
        if self.upstream.startswith("/v1/"):
            return openai_base + self.upstream[3:]
        return root + self.upstream


CHAT = Endpoint(
    "chat/completions",
    "/v1/chat/completions",
    Kind.CHAT,
    _ALL,
    generates=True,
    required=(("messages", list),),
    typed=(("tools", list),),
)
COMPLETIONS = Endpoint("completions", "/v1/completions", Kind.COMPLETIONS, _ALL, generates=True)
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings", Kind.UNARY, _ALL, required=(("input", (str, list)),))
RESPONSES = Endpoint("responses", "/v1/responses", Kind.RESPONSES, _LOCAL_OPENAI, generates=True)
MESSAGES = Endpoint(
    "messages",
    "/v1/messages",
    Kind.MESSAGES,
    _ANTHROPIC,
    generates=True,
    required=(("messages", list), ("max_tokens", int)),
    typed=(("tools", list),),
)
COUNT_TOKENS = Endpoint(
    "messages/count_tokens", "/v1/messages/count_tokens", Kind.UNARY, _ANTHROPIC, required=(("messages", list),)
)
RERANK = Endpoint("rerank", "/v1/rerank", Kind.UNARY, _TOKENIZERS)
TOKENIZE = Endpoint("tokenize", "/tokenize", Kind.UNARY, _TOKENIZERS)
DETOKENIZE = Endpoint("detokenize", "/detokenize", Kind.UNARY, _TOKENIZERS, required=(("tokens", list),))
INFILL = Endpoint("infill", "/infill", Kind.RAW, frozenset({Backend.LLAMACPP}), generates=True)

# Router path -> endpoint. Root-level aliases are the ones the engines themselves serve.
ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
    "/v1/messages/count_tokens": COUNT_TOKENS,
    "/v1/rerank": RERANK,
    "/rerank": RERANK,
    "/tokenize": TOKENIZE,
    "/v1/tokenize": TOKENIZE,
    "/detokenize": DETOKENIZE,
    "/v1/detokenize": DETOKENIZE,
    "/infill": INFILL,
}
