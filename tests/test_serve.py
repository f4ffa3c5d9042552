"""``bert-onnx serve`` run as users run it: real servers in subprocesses on loopback, real clients.

Every answer is compared with ``Encoder.embed`` (or ``encode``) of the same texts *alone*, computed here: batch
invariance means whatever else the server had in flight does not change a vector. The official ``openai`` SDK and
LangChain's ``OpenAIEmbeddings`` talk to the OpenAI-compatible route; token ids are refused unless the server is
started with ``--accept-token-ids``; every bad input the server refuses has a case expecting its 4xx (the same
cases run in process, in the fast tier, in tests/test_serve_asgi.py); a fuzzer checks that no body gets a 5xx;
SIGTERM under load loses no accepted request.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_error, cli_env, run_cli, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import (
    BAD,
    BAD_IDS,
    BODIES,
    LONG,
    REFUSED_IDS,
    ROUTES,
    TOKEN_ID_PARTS,
    V1,
    Body,
    Reply,
    Server,
    call,
    metric,
    read_reply,
    start_server,
)

from bert_onnx import machine
from bert_onnx.export.corpus import documentation_paragraphs
from bert_onnx.runtime import Encoder
from bert_onnx.serve.metrics import METRICS

PARAGRAPHS = documentation_paragraphs()
TEXTS = [
    "I love Korea",
    "héllo wörld — 日本語のテキスト 🙂",
    *PARAGRAPHS[:10],
    *sorted(PARAGRAPHS[10:200], key=len)[-4:],  # the longest ones
    LONG,
]
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def tiny(export_dir: Callable[[str], Path]) -> Iterator[Server]:
    """The tiny checkpoint with the default recipe (cls pooling), default limits."""
    server = start_server(export_dir("tiny"))
    yield server
    assert server.stop() == 0, server.stderr()


@pytest.fixture(scope="module")
def tiny_ids(export_dir: Callable[[str], Path]) -> Iterator[Server]:
    """The tiny checkpoint, default recipe, taking token-id input (``--accept-token-ids``)."""
    server = start_server(export_dir("tiny"), "--accept-token-ids")
    yield server
    assert server.stop() == 0, server.stderr()


@pytest.fixture(scope="module")
def tiny_encoder(export_dir: Callable[[str], Path]) -> Encoder:
    return Encoder(export_dir("tiny"))


def minilm_server(variants_dir: Path, variant: str, *extra: str, env: dict[str, str | None] | None = None) -> Server:
    return start_server(variants_dir, "--variant", variant, "--pooling", "mean", "--normalize", *extra, env=env)


@pytest.fixture(scope="module")
def guarded(variants_dir: Path) -> Iterator[Server]:
    """Real weights with an API key, a queue of 16 texts and batches of at most 1,024 tokens (two long texts)."""
    server = minilm_server(
        variants_dir,
        "fp32",
        "--max-queue",
        "16",
        "--max-batch-tokens",
        "1024",
        "--api-key-env",
        "BERT_ONNX_TEST_KEY",
        env={"BERT_ONNX_TEST_KEY": KEY},
    )
    yield server
    assert server.stop() == 0, server.stderr()


AUTH = {"Authorization": f"Bearer {KEY}"}


def vectors(reply: Reply) -> np.ndarray:
    """The embeddings of an answer, float or base64, in index order."""
    assert reply.status == 200, reply.body[:500]
    data = sorted(reply.json()["data"], key=lambda item: item["index"])
    rows = []
    for item in data:
        value = item["embedding"]
        rows.append(
            np.frombuffer(base64.b64decode(value), dtype="<f4") if isinstance(value, str) else np.array(value, "f4")
        )
    return np.stack(rows)


def alone(encoder: Encoder, texts: list[str], **recipe: Any) -> np.ndarray:
    """Each text embedded alone, as if no other request existed."""
    return np.concatenate([encoder.embed([text], **recipe) for text in texts])


# -- the OpenAI SDK on real weights ---------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "tolerance"), [("fp32", 1e-5), ("int8", 1e-4)])
def test_openai_sdk_equals_embed_alone(variants_dir: Path, variant: str, tolerance: float) -> None:
    import openai

    encoder = Encoder(variants_dir, variant=variant)
    expected = alone(encoder, TEXTS, pooling="mean", normalize=True)
    tokens = sum(len(e.ids) for e in encoder.tokenizer.encodings(TEXTS, encoder.max_length))
    server = minilm_server(variants_dir, variant)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        answer = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # the SDK asks for base64
        got = np.array([item.embedding for item in answer.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
        assert [item.index for item in answer.data] == list(range(len(TEXTS)))
        assert answer.model == "all-MiniLM-L6-v2"
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens

        floats = client.embeddings.create(model="m", input=TEXTS[:3], encoding_format="float")
        np.testing.assert_allclose([d.embedding for d in floats.data], expected[:3], rtol=0, atol=tolerance)
        one = client.embeddings.create(model="m", input=TEXTS[2])
        np.testing.assert_allclose(one.data[0].embedding, expected[2], rtol=0, atol=tolerance)

        # Token ids are refused by default, with the reason, which the SDK raises as its 422 error.
        ids = [encoder.tokenizer.backend.encode(text, add_special_tokens=False).ids for text in TEXTS[:4]]
        with pytest.raises(openai.UnprocessableEntityError, match="this server tokenizes text itself"):
            client.embeddings.create(model="m", input=ids)

        # OpenAI's dimensions: the first N values, renormalized (the server's recipe normalizes).
        cut = client.embeddings.create(model="m", input=TEXTS[:3], dimensions=64)
        expected_cut = alone(encoder, TEXTS[:3], pooling="mean", normalize=True, dimensions=64)
        np.testing.assert_allclose([d.embedding for d in cut.data], expected_cut, rtol=0, atol=tolerance)
        with pytest.raises(openai.UnprocessableEntityError, match=r"dimensions=385 must be in \[1, 384\]"):
            client.embeddings.create(model="m", input="x", dimensions=385)
    finally:
        assert server.stop() == 0, server.stderr()


# -- many clients at once -------------------------------------------------------------------------------------

RECIPES: list[dict[str, Any]] = [
    {},
    {"pooling": "mean", "normalize": True},
    {"pooling": "pooler"},
    {"pooling": "mean", "layers": [-2, -1]},
    {"pooling": "cls", "layers": [0, 1, 2], "combine": "mean", "max_length": 16},
]


def test_64_concurrent_clients_get_their_own_vectors(tiny_ids: Server, tiny_encoder: Encoder) -> None:
    """64 clients start together with mixed lengths, counts, recipes and input kinds (texts and, since this server
    accepts them, token ids); each answer equals the texts embedded alone with that client's recipe."""
    rng = np.random.default_rng(7)
    jobs = []
    for client in range(64):
        count = int(rng.integers(1, 9))
        texts = [PARAGRAPHS[int(i)][: int(rng.integers(1, 600))] for i in rng.integers(0, len(PARAGRAPHS), count)]
        if client % 9 == 0:
            texts[0] = LONG
        recipe = RECIPES[client % len(RECIPES)]
        jobs.append((client, texts, recipe))
    barrier = threading.Barrier(64)

    def send(job: tuple[int, list[str], dict[str, Any]]) -> np.ndarray:
        client, texts, recipe = job
        barrier.wait()
        if not recipe and client % 2:
            return vectors(call(tiny_ids, "POST", "/v1/embeddings", {"input": texts, "encoding_format": "base64"}))
        if not recipe:
            ids = [tiny_encoder.tokenizer.backend.encode(t, add_special_tokens=False).ids for t in texts]
            return vectors(call(tiny_ids, "POST", "/v1/embeddings", {"input": ids, "model": "tiny"}))
        return vectors(call(tiny_ids, "POST", "/embed", {"input": texts, **recipe}))

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(send, jobs))
    for (client, texts, recipe), got in zip(jobs, answers, strict=True):
        np.testing.assert_allclose(got, alone(tiny_encoder, texts, **recipe), rtol=0, atol=1e-5, err_msg=str(client))


# -- every route ----------------------------------------------------------------------------------------------


def test_info_health_tokenize_encode_and_metrics(tiny: Server, tiny_encoder: Encoder) -> None:
    health = call(tiny, "GET", "/health")
    assert (health.status, health.json()) == (200, {"status": "ok"})

    info = call(tiny, "GET", "/info").json()
    assert (info["variant"], info["backend"], info["layers"], info["dim"]) == ("fp32", "onnxruntime", 2, 32)
    assert info["picked_by"].startswith("default (no tuned profile for this machine")
    assert info["machine"]["isa"] == machine.describe()["isa"]
    assert info["manifest"]["outputs"] == json.loads(tiny_encoder.manifest.to_json())["outputs"]
    assert info["settings"]["host"] == "127.0.0.1" and info["settings"]["api_key"] is False
    assert info["token_ids"] == "refused" and info["settings"]["accept_token_ids"] is False
    assert tiny.url.startswith("http://127.0.0.1:")  # loopback unless told otherwise

    tokenized = call(tiny, "POST", "/tokenize", {"input": ["I love Korea", "hello"]}).json()["data"]
    assert tokenized[0] == {
        "index": 0,
        "ids": [101, 1045, 2293, 4420, 102],
        "tokens": ["[CLS]", "i", "love", "korea", "[SEP]"],
    }
    bare = call(tiny, "POST", "/tokenize", {"input": "I love Korea", "add_special_tokens": False}).json()
    assert bare["data"][0]["ids"] == [1045, 2293, 4420]
    cut = call(tiny, "POST", "/tokenize", {"input": LONG, "max_length": 8}).json()
    assert len(cut["data"][0]["ids"]) == 8 and cut["data"][0]["tokens"][-1] == "[SEP]"

    texts = ["I love Korea", PARAGRAPHS[3]]
    names = ["last_hidden_state", "pooler_output", "hidden_states.1"]
    encoded = call(tiny, "POST", "/encode", {"input": texts, "outputs": names})
    assert encoded.status == 200, encoded.body
    for text, row in zip(texts, encoded.json()["data"], strict=True):
        reference = tiny_encoder.encode([text])
        assert reference.hidden_states is not None
        length = int(reference.attention_mask.sum())
        assert row["input_ids"] == reference.input_ids[0].tolist()
        expected = {
            "last_hidden_state": reference.last_hidden_state[0],
            "pooler_output": reference.pooler_output[0],
            "hidden_states.1": reference.hidden_states[1][0],
        }
        for name, array in expected.items():
            payload = row["outputs"][name]
            assert payload["shape"] == list(array[:length].shape if array.ndim == 2 else array.shape)
            got = np.frombuffer(base64.b64decode(payload["data"]), dtype="<f4").reshape(payload["shape"])
            np.testing.assert_allclose(got, array[:length] if array.ndim == 2 else array, rtol=0, atol=1e-5)

    text = call(tiny, "GET", "/metrics").body.decode()
    for name in METRICS:
        assert re.search(rf"^{name}(_bucket|_count)?[{{ ]", text, re.MULTILINE), f"{name} missing from /metrics"
    assert 'bert_onnx_requests_total{route="/encode",status="200"}' in text


# -- token ids (issue: LangChain's default sends tiktoken ids) ------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [case[1:] for case in REFUSED_IDS], ids=[c[0] for c in REFUSED_IDS])
def test_token_ids_are_refused_by_default(tiny: Server, path: str, body: Body) -> None:
    reply = call(tiny, "POST", path, body)
    assert reply.status == 422, reply.body[:500]
    for part in TOKEN_ID_PARTS:
        assert part in reply.error(), reply.error()


def test_texts_are_the_same_whether_or_not_ids_are_accepted(
    tiny: Server, tiny_ids: Server, tiny_encoder: Encoder
) -> None:
    texts = ["hello world", *PARAGRAPHS[:3], LONG]
    expected = alone(tiny_encoder, texts)
    for server in (tiny, tiny_ids):
        np.testing.assert_allclose(vectors(call(server, "POST", V1, {"input": texts})), expected, rtol=0, atol=1e-5)
        by_embed = vectors(call(server, "POST", "/embed", {"input": texts, "pooling": "mean"}))
        np.testing.assert_allclose(by_embed, alone(tiny_encoder, texts, pooling="mean"), rtol=0, atol=1e-5)


def test_accepted_token_ids_from_tokenize_give_the_texts_vectors(tiny_ids: Server, tiny_encoder: Encoder) -> None:
    """With --accept-token-ids, the ids /tokenize gives (without [CLS]/[SEP]) embed to the texts' own vectors,
    on every route that takes input."""
    assert call(tiny_ids, "GET", "/info").json()["token_ids"] == "accepted"
    texts = ["I love Korea", "hello world", PARAGRAPHS[5], LONG]
    tokenized = call(tiny_ids, "POST", "/tokenize", {"input": texts, "add_special_tokens": False}).json()["data"]
    ids = [row["ids"] for row in tokenized]
    assert ids[0] == [1045, 2293, 4420]
    np.testing.assert_allclose(
        vectors(call(tiny_ids, "POST", V1, {"input": ids})), alone(tiny_encoder, texts), rtol=0, atol=1e-5
    )
    one = vectors(call(tiny_ids, "POST", V1, {"input": ids[1]}))  # a single sequence of ids
    np.testing.assert_allclose(one, alone(tiny_encoder, texts[1:2]), rtol=0, atol=1e-5)
    recipe = {"pooling": "mean", "normalize": True, "max_length": 16}
    by_embed = vectors(call(tiny_ids, "POST", "/embed", {"input": ids, **recipe}))
    np.testing.assert_allclose(by_embed, alone(tiny_encoder, texts, **recipe), rtol=0, atol=1e-5)
    encoded = call(tiny_ids, "POST", "/encode", {"input": ids[:2], "outputs": ["pooler_output"]}).json()["data"]
    with_special = call(tiny_ids, "POST", "/tokenize", {"input": texts[:2]}).json()["data"]
    assert [row["input_ids"] for row in encoded] == [row["ids"] for row in with_special]
    for text, row in zip(texts[:2], encoded, strict=True):
        payload = row["outputs"]["pooler_output"]
        got = np.frombuffer(base64.b64decode(payload["data"]), dtype="<f4")
        np.testing.assert_allclose(got, tiny_encoder.encode([text]).pooler_output[0], rtol=0, atol=1e-5)


def test_langchain_with_check_embedding_ctx_length_off_sends_text(tiny: Server, tiny_encoder: Encoder) -> None:
    """LangChain's OpenAIEmbeddings, as docs/serve.md configures it, against a default server (token ids refused):
    it sends the texts, and gets their vectors."""
    from langchain_openai import OpenAIEmbeddings

    client = OpenAIEmbeddings(
        model="tiny",
        base_url=f"{tiny.url}/v1",
        api_key="unused",  # type: ignore[arg-type]  # pydantic wraps the str in a SecretStr
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    texts = ["I love Korea", "line one\nline two", *PARAGRAPHS[:4], LONG]
    got = np.array(client.embed_documents(texts), dtype=np.float32)
    np.testing.assert_allclose(got, alone(tiny_encoder, texts), rtol=0, atol=1e-5)
    query = np.array(client.embed_query(texts[0]), dtype=np.float32)
    np.testing.assert_allclose(query, alone(tiny_encoder, texts[:1])[0], rtol=0, atol=1e-5)


# -- bad input: each refusal and its status -------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "status", "needle"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_input_gets_its_4xx(tiny: Server, path: str, body: Body, status: int, needle: str) -> None:
    reply = call(tiny, "POST", path, body)
    assert reply.status == status, reply.body[:500]
    assert needle in reply.error(), reply.error()


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"), [case[1:] for case in BAD_IDS], ids=[c[0] for c in BAD_IDS]
)
def test_bad_token_ids_get_their_4xx_where_ids_are_accepted(
    tiny_ids: Server, path: str, body: Body, status: int, needle: str
) -> None:
    reply = call(tiny_ids, "POST", path, body)
    assert reply.status == status, reply.body[:500]
    assert needle in reply.error(), reply.error()


def test_unknown_routes_methods_and_large_bodies(tiny: Server) -> None:
    assert call(tiny, "GET", "/v2/nothing").status == 404
    assert "Method Not Allowed" in call(tiny, "GET", "/embed").error()
    assert call(tiny, "PUT", "/v1/embeddings", {"input": "a"}).status == 405

    # A declared length over the limit is refused before the body is read.
    with socket.create_connection((tiny.host, tiny.port), timeout=60) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 17000000\r\n\r\n{")
        head = read_reply(sock)
    assert head.startswith("HTTP/1.1 413"), head
    assert "over the limit of 16777216" in head

    # A chunked body (no declared length) is counted while it is read.
    chunk = b"x" * (1 << 20)
    with socket.create_connection((tiny.host, tiny.port), timeout=60) as sock:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(17):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the last chunks
        head = read_reply(sock)
    assert head.startswith("HTTP/1.1 413"), head[:300]
    assert call(tiny, "GET", "/health").status == 200


# -- fuzzing: no body gets a 5xx ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ROUTES), body=BODIES)
def test_fuzzed_bodies_never_get_a_5xx(tiny_ids: Server, path: str, body: str | bytes) -> None:
    reply = call(tiny_ids, "POST", path, body)
    assert reply.status < 500, (path, body, reply.body[:500])
    if reply.status >= 400:
        reply.error()  # a JSON error naming the problem
    assert tiny_ids.process.poll() is None


# -- overload, auth and clients that leave (real weights, so work takes long enough to watch) -----------------


def test_api_key_is_required_except_for_health(guarded: Server) -> None:
    import openai

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        reply = call(guarded, "POST", V1, {"input": "a"}, headers=headers)
        assert reply.status == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert "API key" in reply.error()
    assert call(guarded, "GET", "/metrics").status == 401
    assert call(guarded, "GET", "/health").status == 200
    assert call(guarded, "POST", V1, {"input": "a"}, headers=AUTH).status == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="m", input="a"
        )


def test_full_queue_answers_429_with_retry_after(guarded: Server, variants_dir: Path) -> None:
    """16 long texts fill the queue (--max-queue 16); a request meanwhile gets 429 and Retry-After, and is
    accepted once the queue has drained."""
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, guarded, "POST", V1, {"input": [LONG] * 16}, AUTH)
        wait_for(lambda: metric(guarded, "bert_onnx_queue_texts", AUTH) > 0, 60, "the long request queued")
        refused = call(guarded, "POST", V1, {"input": "one more"}, headers=AUTH)
        assert refused.status == 429, refused.body
        assert int(refused.headers["retry-after"]) >= 1
        assert "the limit is 16 (max_queue)" in refused.error()
        answer = first.result(timeout=120)
    expected = Encoder(variants_dir, variant="fp32").embed([LONG], pooling="mean", normalize=True)
    np.testing.assert_allclose(vectors(answer), np.repeat(expected, 16, axis=0), rtol=0, atol=1e-5)
    assert call(guarded, "POST", V1, {"input": "one more"}, headers=AUTH).status == 200


def test_encode_answer_over_the_size_limit_gets_413(guarded: Server) -> None:
    everything = [f"hidden_states.{i}" for i in range(7)] + ["last_hidden_state", "pooler_output"]
    reply = call(guarded, "POST", "/encode", {"input": [LONG] * 16, "outputs": everything}, headers=AUTH)
    assert reply.status == 413 and "over the limit of 33554432" in reply.error(), reply.body


def test_a_client_that_disconnects_has_its_work_dropped(guarded: Server) -> None:
    """16 long texts run two per batch (--max-batch-tokens 1024); the client hangs up once the first batches
    are under way, and the rest are dropped, not run."""
    dropped = metric(guarded, "bert_onnx_texts_dropped_total", AUTH)
    ran = metric(guarded, "bert_onnx_texts_total", AUTH)
    body = json.dumps({"input": [LONG] * 16}).encode()
    with socket.create_connection((guarded.host, guarded.port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (KEY.encode(), len(body), body)
        )
        wait_for(lambda: metric(guarded, "bert_onnx_queue_texts", AUTH) > 0, 60, "the request queued")
    wait_for(lambda: metric(guarded, "bert_onnx_texts_dropped_total", AUTH) > dropped, 60, "texts dropped")
    wait_for(lambda: metric(guarded, "bert_onnx_queue_texts", AUTH) == 0, 60, "the queue emptied")
    assert metric(guarded, "bert_onnx_texts_total", AUTH) - ran < 16
    assert call(guarded, "GET", "/health").status == 200


# -- SIGTERM under load ---------------------------------------------------------------------------------------


def test_sigterm_under_load_answers_every_accepted_request(export_dir: Callable[[str], Path]) -> None:
    """16 clients keep sending until the server goes away. Every request the server accepted is answered (the
    server's count equals the clients' count of 200s, and some of those were in flight at SIGTERM); the
    others fail to connect or find their idle connection closed, never with an error status; exit 0."""
    server = start_server(export_dir("tiny"))
    encoder = Encoder(export_dir("tiny"))
    texts = [LONG, *PARAGRAPHS[:7]]
    expected = alone(encoder, texts)
    body = json.dumps({"input": texts, "encoding_format": "base64"})
    answered: list[int] = []
    after_signal: list[int] = []
    signalled = threading.Event()
    failures: list[str] = []

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
        while True:
            try:
                connection.request("POST", V1, body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                reply = Reply(response.status, {}, response.read())
            except (ConnectionError, http.client.HTTPException, OSError):
                return  # not accepted: the server had stopped listening or closed this idle connection
            if reply.status != 200:
                failures.append(f"client {number}: status {reply.status}: {reply.body[:200]!r}")
                return
            difference = float(np.abs(vectors(reply) - expected).max())
            if difference > 1e-5:
                failures.append(f"client {number}: an answer differs from embed alone by {difference}")
            answered.append(number)
            if signalled.is_set():
                after_signal.append(number)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(answered) >= 32, 60, "32 answers before SIGTERM")
    signalled.set()
    os.kill(server.process.pid, signal.SIGTERM)
    code = server.wait()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert code == 0, server.stderr()
    stopped = re.search(r"stopped: (\d+) requests accepted, (\d+) answered, (\d+) abandoned", server.stderr())
    assert stopped, server.stderr()
    accepted, replied, abandoned = map(int, stopped.groups())
    assert (accepted, replied, abandoned) == (len(answered), len(answered), 0), server.stderr()
    assert after_signal, "no request was in flight when SIGTERM arrived"


# -- the command line -----------------------------------------------------------------------------------------


def test_runtime_and_cli_do_not_import_the_server_stack() -> None:
    """``bert_onnx.runtime``, ``jobs`` and the CLI's module load without Starlette, uvicorn or prometheus-client
    (the CLI reads only ``bert_onnx.serve.settings``, for its defaults); only ``bert-onnx serve`` imports them,
    when it runs."""
    code = (
        "import sys, bert_onnx.runtime, bert_onnx.jobs, bert_onnx.cli; "
        "print([m for m in ('starlette', 'uvicorn', 'prometheus_client', 'bert_onnx.serve.app') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_serve_refuses_bad_setups_with_one_line(export_dir: Callable[[str], Path], tmp_path: Path) -> None:
    assert_error(run_cli("serve", tmp_path / "missing"), ["not a folder"])
    model = export_dir("tiny")
    assert_error(run_cli("serve", model, "--api-key-env", "BERT_ONNX_NO_SUCH_VAR"), ["BERT_ONNX_NO_SUCH_VAR"])
    assert_error(run_cli("serve", model, "--layers", "7"), ["layer 7 is out of range"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_error(run_cli("serve", model, "--port", str(port)), [f"cannot listen on 127.0.0.1:{port}"])
