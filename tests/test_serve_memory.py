"""No client can grow a running server's memory by what it sends: a real ``bert-onnx serve`` process, 250 requests
each with a different ``max_length``, and the process's resident memory read from /proc before and after; and
texts of megabytes, whose peak memory is read the same way.

The tokenizer once kept a configured copy of itself per ``max_length`` (about 6 MB each with BERT's vocabulary):
252 such requests took a server from 185 MB to 1.73 GB. The bound here, 100 MB, is far below that and far above
what warm caches move.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import LONG, call, rss_mb, start_server
from tokenizers import Tokenizer

from bert_onnx.runtime import Encoder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status (Linux)")

REQUESTS = 250
GROWTH_MB = 100


def test_250_max_lengths_do_not_grow_the_servers_memory(export_dir: Callable[[str], Path]) -> None:
    model = export_dir("tiny")
    encoder = Encoder(model)
    texts = [LONG, "I love Korea", LONG[:700]]
    server = start_server(model)
    try:
        # Warm up at the longest length first, so the runtime's buffers for the largest batch already exist.
        for route, extra in (("/embed", {}), ("/encode", {"outputs": ["last_hidden_state"]}), ("/tokenize", {})):
            assert call(server, "POST", route, {"input": texts, "max_length": 512, **extra}).status == 200
        before = rss_mb(server.process.pid)
        lengths = np.random.default_rng(0).permutation(np.arange(2, 513))[:REQUESTS].tolist()
        for number, max_length in enumerate(lengths):
            route = ("/embed", "/tokenize")[number % 2]
            reply = call(server, "POST", route, {"input": texts, "max_length": max_length})
            assert reply.status == 200, reply.body[:300]
            if number < 3:  # the answers are right, not merely 200: cut to max_length as Encoder.embed cuts
                if route == "/embed":
                    got = np.array([row["embedding"] for row in reply.json()["data"]], dtype=np.float32)
                    np.testing.assert_allclose(got, encoder.embed(texts, max_length=max_length), rtol=0, atol=1e-5)
                else:
                    ids = [row["ids"] for row in reply.json()["data"]]
                    expected = encoder.tokenizer.encodings(texts, max_length)
                    assert ids == [list(e.ids) for e in expected]
        after = rss_mb(server.process.pid)
    finally:
        assert server.stop() == 0, server.stderr()
    assert len(set(lengths)) == REQUESTS
    assert after - before <= GROWTH_MB, f"RSS {before:.0f} MB -> {after:.0f} MB over {REQUESTS} max_length values"


def test_megabyte_texts_do_not_raise_the_servers_peak_memory(export_dir: Callable[[str], Path]) -> None:
    """A 4 MB text is read only up to its first max_length tokens, on every route that tokenizes (the whole text
    once took a server to 1.5 GB per 4 MB: ~700 bytes per token in a tokenizers.Encoding); one that cannot be cut
    there is refused, naming the limit."""
    model = export_dir("tiny")
    encoder = Encoder(model)
    huge = "word " * 800_000  # 4 MB, 800,000 tokens
    uncut = "字" * 150_000 + " a"  # no space before the end: cut only before an ideograph, under BERT's normalizer
    server = start_server(model)
    try:
        assert call(server, "POST", "/v1/embeddings", {"input": LONG}).status == 200  # warm
        before = rss_mb(server.process.pid, "VmHWM")
        reply = call(server, "POST", "/v1/embeddings", {"input": huge})
        assert reply.status == 200, reply.body[:300]
        assert reply.json()["usage"]["prompt_tokens"] == encoder.max_length
        got = np.array(reply.json()["data"][0]["embedding"], dtype=np.float32)
        np.testing.assert_allclose(got, encoder.embed([huge])[0], rtol=0, atol=1e-5)
        bare = call(server, "POST", "/tokenize", {"input": huge, "add_special_tokens": False}).json()["data"][0]
        assert bare["ids"] == list(encoder.tokenizer.encodings([huge], encoder.max_length)[0].ids)[1:-1]
        refused = call(server, "POST", "/embed", {"input": [huge], "truncation": False})
        assert refused.status == 422 and "is at least" in refused.json()["error"]["message"]
        cjk = call(server, "POST", "/tokenize", {"input": uncut, "max_length": 8})
        reference = Tokenizer.from_file(str(model / "tokenizer.json"))  # tokenizers' own truncation, whole text
        reference.enable_truncation(8)
        assert cjk.status == 200 and cjk.json()["data"][0]["ids"] == reference.encode(uncut).ids
        spaceless = call(server, "POST", "/embed", {"input": ["a" * 150_000]})
        assert spaceless.status == 413 and "max_text_chars" in spaceless.json()["error"]["message"]
        after = rss_mb(server.process.pid, "VmHWM")
    finally:
        assert server.stop() == 0, server.stderr()
    assert after - before <= GROWTH_MB, f"peak RSS {before:.0f} MB -> {after:.0f} MB"
