"""``ServeSettings``: where the server listens, how it batches, and the limits that protect it, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field

from bert_onnx.errors import InvalidValueError


@dataclass(frozen=True)
class ServeSettings:
    """Listening address, batching and limits of ``bert-onnx serve``.

    ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens bound one batch; ``max_wait_ms`` is how long the
    worker may wait for more requests to merge, ``max_padding`` the padding a batch may hold as a fraction of its
    real tokens (see :class:`~bert_onnx.serve.batcher.Batcher`); ``max_queue``
    texts may be in flight before new requests get 429. ``api_key``, when set, is required as
    ``Authorization: Bearer KEY`` on every route but ``/health`` (never shown in a repr or a log).

    Per request: at most ``max_body_bytes`` of body, ``max_inputs`` texts and ``max_request_tokens`` tokens (413
    beyond); ``/encode`` at most ``max_encode_inputs`` texts and ``max_encode_bytes`` of float32 output.
    The defaults follow OpenAI's embeddings API where it has one (2,048 inputs, 300,000 tokens per request).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    max_queue: int = 4096
    max_padding: float | None = 0.25
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 16 << 20
    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    max_encode_inputs: int = 16
    max_encode_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise InvalidValueError(f"host={self.host!r} must be a host name or address")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise InvalidValueError(f"port={self.port!r} must be an int in [0, 65535] (0: any free port)")
        for name in (
            "max_batch_size",
            "max_batch_tokens",
            "max_queue",
            "max_body_bytes",
            "max_inputs",
            "max_request_tokens",
            "max_encode_inputs",
            "max_encode_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidValueError(f"{name}={value!r} must be a positive int")
        wait = self.max_wait_ms
        if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= 1000:
            raise InvalidValueError(f"max_wait_ms={wait!r} must be a number of milliseconds in [0, 1000]")
        padding = self.max_padding
        if padding is not None and (not isinstance(padding, int | float) or isinstance(padding, bool) or padding < 0):
            raise InvalidValueError(f"max_padding={padding!r} must be a fraction >= 0 or None")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise InvalidValueError("api_key must be a non-empty string or None")
