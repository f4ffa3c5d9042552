"""The server's routes in process, on the tiny checkpoint: the ASGI app under Starlette's ``TestClient`` (no socket,
no subprocess), so every refusal runs in the fast tier.

The same bodies as tests/test_serve.py's real-server cases (tests/serve_helpers.py holds them): each bad body gets
its 4xx and a JSON error naming the problem; token ids are refused by default with the three-part message and
checked like text where accepted; a fuzzer finds no body that gets a 5xx. The app's lifespan runs, so requests go
through the real batcher and model.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import BAD, BAD_IDS, BODIES, LONG, REFUSED_IDS, ROUTES, TOKEN_ID_PARTS, V1, Body, as_bytes
from starlette.testclient import TestClient

from bert_onnx.runtime import EmbedRecipe, Encoder
from bert_onnx.serve.app import EmbeddingServer
from bert_onnx.serve.settings import ServeSettings

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def tiny(encoder: Callable[[str], Encoder]) -> Encoder:
    return encoder("tiny")


def client_for(encoder: Encoder, **settings: Any) -> TestClient:
    return TestClient(EmbeddingServer(encoder, EmbedRecipe(), ServeSettings(**settings)).app)


@pytest.fixture(scope="module")
def default(tiny: Encoder) -> Iterator[TestClient]:
    """The default settings: token ids refused."""
    with client_for(tiny) as client:  # entering runs the lifespan: the batcher starts
        yield client


@pytest.fixture(scope="module")
def accepting(tiny: Encoder) -> Iterator[TestClient]:
    with client_for(tiny, accept_token_ids=True) as client:
        yield client


def post(client: TestClient, path: str, body: Body) -> Any:
    return client.post(path, content=as_bytes(body), headers={"Content-Type": "application/json"})


def error(reply: Any) -> str:
    data = reply.json()
    assert set(data) == {"error"} and isinstance(data["error"]["message"], str), data
    return str(data["error"]["message"])


def vectors(reply: Any) -> np.ndarray:
    assert reply.status_code == 200, reply.text[:500]
    return np.array([item["embedding"] for item in reply.json()["data"]], dtype=np.float32)


@pytest.mark.parametrize(("path", "body", "status", "needle"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_input_gets_its_4xx(default: TestClient, path: str, body: Body, status: int, needle: str) -> None:
    reply = post(default, path, body)
    assert reply.status_code == status, reply.text[:500]
    assert needle in error(reply), error(reply)


@pytest.mark.parametrize(("path", "body"), [case[1:] for case in REFUSED_IDS], ids=[c[0] for c in REFUSED_IDS])
def test_token_ids_are_refused_by_default(default: TestClient, path: str, body: Body) -> None:
    reply = post(default, path, body)
    assert reply.status_code == 422, reply.text[:500]
    assert reply.json()["error"]["param"] == "input"
    for part in TOKEN_ID_PARTS:
        assert part in error(reply), error(reply)


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"), [case[1:] for case in BAD_IDS], ids=[c[0] for c in BAD_IDS]
)
def test_bad_token_ids_get_their_4xx_where_ids_are_accepted(
    accepting: TestClient, path: str, body: Body, status: int, needle: str
) -> None:
    reply = post(accepting, path, body)
    assert reply.status_code == status, reply.text[:500]
    assert needle in error(reply), error(reply)


def test_accepted_ids_embed_like_their_text_and_info_shows_the_mode(
    default: TestClient, accepting: TestClient, tiny: Encoder
) -> None:
    assert default.get("/info").json()["token_ids"] == "refused"
    assert accepting.get("/info").json()["token_ids"] == "accepted"
    texts = ["I love Korea", "hello world"]
    bare = post(accepting, "/tokenize", {"input": texts, "add_special_tokens": False}).json()["data"]
    by_ids = vectors(post(accepting, V1, {"input": [row["ids"] for row in bare]}))
    by_text = vectors(post(default, V1, {"input": texts}))
    expected = np.concatenate([tiny.embed([text]) for text in texts])
    np.testing.assert_allclose(by_ids, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(by_text, expected, rtol=0, atol=1e-5)


def test_per_request_recipe_and_lengths(default: TestClient, tiny: Encoder) -> None:
    """/embed's recipe fields reach the recipe and come back in the answer; /encode and /tokenize take
    max_length and truncation, checked the same way."""
    recipe = {"pooling": "mean", "layers": [0, -1], "combine": "concat", "normalize": True, "max_length": 6}
    reply = post(default, "/embed", {"input": ["I love Korea very much indeed"], **recipe, "truncation": True})
    assert reply.json()["recipe"] == {**recipe, "truncation": True, "dimensions": None}
    assert reply.json()["dim"] == 2 * tiny.hidden_size
    expected = tiny.embed(["I love Korea very much indeed"], **{**recipe, "layers": (0, -1)})
    np.testing.assert_allclose(vectors(reply), expected, rtol=0, atol=1e-5)
    cut = post(default, "/tokenize", {"input": "I love Korea very much indeed", "max_length": 4}).json()
    assert cut["data"][0]["tokens"] == ["[CLS]", "i", "love", "[SEP]"]
    encoded = post(default, "/encode", {"input": "I love Korea", "max_length": 4, "outputs": ["last_hidden_state"]})
    payload = encoded.json()["data"][0]["outputs"]["last_hidden_state"]
    assert payload["shape"] == [4, tiny.hidden_size]
    got = np.frombuffer(base64.b64decode(payload["data"]), dtype="<f4").reshape(payload["shape"])
    np.testing.assert_allclose(got, tiny.encode(["I love Korea"], max_length=4).last_hidden_state[0], atol=1e-5)


def test_bare_ids_take_the_requests_length_and_errors_name_their_field(default: TestClient, tiny: Encoder) -> None:
    """/tokenize without special tokens gives the ids inside [CLS] ... [SEP] under the same max_length and
    truncation; a bad recipe field is named in the error's param, as OpenAI's clients read it."""
    texts = ["I love Korea", LONG]
    bare = post(default, "/tokenize", {"input": texts, "add_special_tokens": False, "max_length": 8}).json()["data"]
    full = tiny.tokenizer.encodings(texts, 8)
    assert [row["ids"] for row in bare] == [list(e.ids)[1:-1] for e in full]
    assert bare[0]["ids"] == [1045, 2293, 4420] and len(bare[1]["ids"]) == 6
    for body, param in (
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "pooling": None}, "pooling"),
        ({"input": "a", "layers": [2, 2]}, "layers"),
    ):
        reply = post(default, "/embed", body)
        assert reply.status_code == 422 and reply.json()["error"]["param"] == param, reply.text


def test_a_text_with_no_token_left_to_pool_is_a_422(tiny: Encoder) -> None:
    """A text whose tokens all merge into a prompt left out of pooling is refused, naming it, instead of
    answering NaN (max pooling) or zeros (mean) for it."""
    recipe = EmbedRecipe(pooling="max", normalize=True, prompt="aac", include_prompt=False)
    with TestClient(EmbeddingServer(tiny, recipe, ServeSettings()).app) as client:
        assert vectors(post(client, V1, {"input": ["hello world"]})).shape == (1, tiny.hidden_size)
        reply = post(client, V1, {"input": ["hello world", "hen"]})
        assert reply.status_code == 422 and reply.json()["error"]["param"] == "input"
        assert error(reply).startswith("input[1] leaves no token to pool"), error(reply)


def test_an_answer_over_the_limit_is_refused_before_it_runs(tiny: Encoder) -> None:
    """/embed and /v1/embeddings refuse an answer over max_encode_bytes of float32 (layers and pooling modes
    multiply a vector's length), as /encode does, before any text is tokenized or run."""
    dim = tiny.hidden_size
    with client_for(tiny, max_encode_bytes=4 * dim * 3) as small:
        assert vectors(post(small, V1, {"input": ["a", "b", "c"]})).shape == (3, dim)
        reply = post(small, V1, {"input": ["a", "b", "c", "d"]})
        assert reply.status_code == 413 and "over the limit of" in error(reply)
        reply = post(small, "/embed", {"input": ["a", "b"], "pooling": ["mean", "max"]})
        assert reply.status_code == 413 and "fewer layers or pooling modes" in error(reply)
        assert post(small, "/embed", {"input": ["a"], "pooling": ["mean", "max"]}).status_code == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ROUTES), body=BODIES, accept=st.booleans())
def test_fuzzed_bodies_never_get_a_5xx(
    default: TestClient, accepting: TestClient, path: str, body: str | bytes, accept: bool
) -> None:
    reply = post(accepting if accept else default, path, body)
    assert reply.status_code < 500, (path, body, reply.text[:500])
    if reply.status_code >= 400:
        error(reply)
