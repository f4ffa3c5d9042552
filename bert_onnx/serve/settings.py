"""``ServeSettings``: where the server listens, how it batches, and the limits that protect it.

Each value is checked here, once, where it enters (the command line builds a ``ServeSettings`` too, and reads its
defaults from these fields); the batcher and the routes take the checked object and check nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bert_onnx._checks import check_bool, check_float, check_int
from bert_onnx.errors import InvalidValueError


@dataclass(frozen=True)
class BatchSettings:
    """How :class:`~bert_onnx.serve.batcher.Batcher` forms batches and how much work it lets in flight.

    ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens bound one batch (a longer text runs alone);
    ``max_padding`` closes a batch before its padding passes that fraction of its real tokens (``None``: no bound);
    ``max_wait_ms`` (0 to 1,000) is how long the worker may wait for returning clients to fill a round;
    ``max_queue`` texts may be in flight (waiting or running) before a new request is refused.
    """

    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    max_queue: int = 4096
    max_padding: float | None = 0.25

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_queue"):
            self._set(name, check_int(name, getattr(self, name), low=1))
        self._set("max_wait_ms", check_float("max_wait_ms", self.max_wait_ms, 0, 1000, hint="milliseconds"))
        if self.max_padding is not None:
            padding = check_float("max_padding", self.max_padding, low=0, hint="a fraction of real tokens, or None")
            self._set("max_padding", padding)

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen: store the checked, normalized value


@dataclass(frozen=True)
class ServeSettings(BatchSettings):
    """Listening address, batching (:class:`BatchSettings`' fields) and limits of ``bert-onnx serve``.

    ``api_key``, when set, is required as ``Authorization: Bearer KEY`` on every route but ``/health`` (never
    shown in a repr or a log). ``accept_token_ids``: take token-id arrays as ``input`` (off by default: this
    server tokenizes text itself, and ids from another tokenizer, such as the tiktoken ids LangChain's
    ``OpenAIEmbeddings`` sends by default, would silently give wrong vectors); turn it on only for clients that
    send ids from this model's own tokenizer (``POST /tokenize``).

    Per request: at most ``max_body_bytes`` of body, ``max_inputs`` texts and ``max_request_tokens`` tokens (413
    beyond); ``/encode`` at most ``max_encode_inputs`` texts; an answer of ``/encode``, ``/embed`` or
    ``/v1/embeddings`` at most ``max_encode_bytes`` of float32. A long text is tokenized only up to a space past its
    first ``max_length`` tokens; one that would need more than ``max_text_chars`` characters tokenized at once (no
    such space, as in a long run of CJK text under a byte-level or SentencePiece tokenizer) is refused with 413.
    The defaults follow OpenAI's embeddings API where it has one (2,048 inputs, 300,000 tokens per request).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = field(default=None, repr=False)
    accept_token_ids: bool = False
    max_body_bytes: int = 16 << 20
    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    max_encode_inputs: int = 16
    max_encode_bytes: int = 32 << 20
    max_text_chars: int = 100_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.host, str) or not self.host:
            raise InvalidValueError(f"host={self.host!r} must be a host name or address")
        self._set("port", check_int("port", self.port, 0, 65535, hint="0: any free port"))
        limits = ("max_body_bytes", "max_inputs", "max_request_tokens", "max_encode_inputs", "max_encode_bytes")
        for name in (*limits, "max_text_chars"):
            self._set(name, check_int(name, getattr(self, name), low=1))
        self._set("accept_token_ids", check_bool("accept_token_ids", self.accept_token_ids))
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise InvalidValueError("api_key must be a non-empty string or None")
