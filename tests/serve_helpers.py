"""Running ``bert-onnx serve`` as users do (a subprocess on a free loopback port) and talking to it over HTTP, and
the bodies the server must refuse, shared by the real-server tests and the in-process (ASGI) ones.

Plain functions for tests/test_serve*.py; the stdlib's ``http.client`` sends exactly the bytes a test gives it, so
malformed bodies, odd methods and raw chunked uploads reach the server unchanged.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from helpers import cli_env, wait_for
from hypothesis import strategies as st

Body = bytes | str | dict[str, Any] | list[Any]
LONG = "Every token of this text counts toward the longest row a batch can hold. " * 60  # > 512 tokens
V1 = "/v1/embeddings"

# (name, route, body, status, text the error message holds), for a server with the default settings (token ids
# refused) and the tiny checkpoint.
BAD: list[tuple[str, str, Body, int, str]] = [
    ("truncated JSON", V1, '{"input": ["a"', 400, "not valid JSON"),
    ("not JSON at all", V1, "input=hello", 400, "not valid JSON"),
    ("invalid UTF-8", V1, b'{"input": "\xff\xfe"}', 400, "not valid JSON"),
    ("nested too deeply", V1, "[" * 100_000 + "]" * 100_000, 400, "nested too deeply"),
    ("an integer of 5,000 digits", V1, '{"input": [' + "9" * 5000 + "]}", 400, "not valid JSON"),
    ("an array, not an object", V1, [1, 2], 400, "must be a JSON object"),
    ("empty body", V1, b"", 400, "not valid JSON"),
    ("no input", V1, {"model": "m"}, 422, "input is required"),
    ("input null", V1, {"input": None}, 422, "input is required"),
    ("input a number", V1, {"input": 5}, 422, "input must be"),
    ("input an object", V1, {"input": {"text": "a"}}, 422, "input must be"),
    ("empty list", V1, {"input": []}, 422, "empty list"),
    ("empty string", V1, {"input": ""}, 422, "empty string"),
    ("empty string in a list", V1, {"input": ["a", ""]}, 422, "input[1] is an empty string"),
    ("texts and numbers mixed", V1, {"input": ["a", 3]}, 422, "input[1] is a number"),
    ("floats as ids", V1, {"input": [1.5, 2.0]}, 422, "input must be a string, a list of strings;"),
    ("a lone surrogate", V1, '{"input": ["ok", "bad \\ud800 text"]}', 422, "lone surrogate U+D800"),
    ("dimensions over the vector's", V1, {"input": "a", "dimensions": 33}, 422, "dimensions=33 must be in [1, 32]"),
    ("dimensions 0", V1, {"input": "a", "dimensions": 0}, 422, "dimensions=0 must be a positive int"),
    ("dimensions a string", V1, {"input": "a", "dimensions": "8"}, 422, "dimensions"),
    ("an unknown prompt", V1, {"input": "a", "prompt_name": "query"}, 422, "is not one of this model's prompts"),
    ("an unknown field", V1, {"input": "a", "temperature": 1}, 422, "unsupported field(s) for POST /v1/embeddings"),
    ("model not a string", V1, {"input": "a", "model": 3}, 422, "model must be a string"),
    ("encoding_format hex", V1, {"input": "a", "encoding_format": "hex"}, 422, "encoding_format='hex'"),
    ("2,049 inputs", V1, {"input": ["a"] * 2049}, 413, "2049 items, over the limit of 2048"),
    ("over 300,000 tokens", V1, {"input": [LONG] * 600}, 413, "tokens, over the limit of 300000"),
    ("pooling avg", "/embed", {"input": "a", "pooling": "avg"}, 422, "pooling='avg' is not one of cls, pooler, mean"),
    ("layer out of range", "/embed", {"input": "a", "layers": [9]}, 422, "layer 9 is out of range"),
    ("layers a string", "/embed", {"input": "a", "layers": "-4:"}, 422, "layers='-4:' must be an int"),
    ("pooler with layers", "/embed", {"input": "a", "pooling": "pooler", "layers": [1]}, 422, "takes no layers"),
    ("normalize a string", "/embed", {"input": "a", "normalize": "yes"}, 422, "normalize='yes' must be True"),
    ("max_length over the model's", "/embed", {"input": "a", "max_length": 4096}, 422, "in [2, 512]"),
    ("max_length 1", "/embed", {"input": "a", "max_length": 1}, 422, "max_length=1 must be an int in [2, 512]"),
    ("max_length a boolean", "/encode", {"input": "a", "max_length": True}, 422, "max_length=True must be an int"),
    ("max_length a string", "/tokenize", {"input": "a", "max_length": "8"}, 422, "max_length='8' must be an int"),
    ("too long, truncation off", "/embed", {"input": [LONG], "truncation": False}, 422, "input[0] is"),
    ("batch_size per request", "/embed", {"input": "a", "batch_size": 4}, 422, "unsupported field(s)"),
    ("an unknown output", "/encode", {"input": "a", "outputs": ["hidden_states.9"]}, 422, "'hidden_states.9' is not"),
    ("outputs empty", "/encode", {"input": "a", "outputs": []}, 422, "outputs is an empty list"),
    ("17 texts to encode", "/encode", {"input": ["a"] * 17}, 413, "17 items, over the limit of 16"),
    ("tokenize ids", "/tokenize", {"input": [1, 2]}, 422, "input must be a string, a list of strings;"),
    ("tokenize id lists", "/tokenize", {"input": [[1, 2]]}, 422, "input must be a string, a list of strings;"),
    ("add_special_tokens 1", "/tokenize", {"input": "a", "add_special_tokens": 1}, 422, "must be true or false"),
    ("a layer twice", "/embed", {"input": "a", "layers": [-1, -1, -1]}, 422, "names hidden state 2 more than once"),
    ("a layer twice, two ways", "/embed", {"input": "a", "layers": [2, -1]}, 422, "hidden state 2 more than once"),
    ("a mode twice", "/embed", {"input": "a", "pooling": ["mean", "max", "mean"]}, 422, "a mode more than once"),
    (
        "bare ids, too long, truncation off",
        "/tokenize",
        {"input": [LONG], "add_special_tokens": False, "max_length": 4, "truncation": False},
        422,
        "input[0] is at least",
    ),
]

# Token ids a default server refuses, each with the same three-part message (TOKEN_ID_PARTS). The first two are
# tiktoken's cl100k ids of "hello world", what LangChain's OpenAIEmbeddings sends by default.
REFUSED_IDS: list[tuple[str, str, Body]] = [
    ("tiktoken ids", V1, {"input": [15339, 1917]}),
    ("tiktoken id lists", V1, {"input": [[15339, 1917], [15339]], "model": "text-embedding-3-small"}),
    ("ids to /embed", "/embed", {"input": [[101, 2023]], "pooling": "mean"}),
    ("ids to /encode", "/encode", {"input": [2023, 2003], "outputs": ["pooler_output"]}),
    ("an empty id list", V1, {"input": [[]]}),
    ("booleans as ids", V1, {"input": [[True, False]]}),
    ("id lists and texts mixed", V1, {"input": [[1, 2], "a"]}),
]
TOKEN_ID_PARTS = (
    "this server tokenizes text itself",
    "Send the texts as strings instead (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))",
    "start the server with --accept-token-ids",
)

# Bad token-id input on a server that accepts token ids.
BAD_IDS: list[tuple[str, str, Body, int, str]] = [
    ("empty id list", V1, {"input": [[]]}, 422, "empty list of token ids"),
    ("booleans as ids", V1, {"input": [[True, False]]}, 422, "not a list of integer token ids"),
    ("id lists and texts mixed", V1, {"input": [[1, 2], "a"]}, 422, "input[1] is not a list of integer token ids"),
    ("texts and id lists mixed", V1, {"input": ["a", [1, 2]]}, 422, "input[1] is an array"),
    ("an id over the vocabulary", V1, {"input": [[101, 30522]]}, 422, "input[0][1] = 30522 is outside"),
    ("a negative id", V1, {"input": [-1, 5]}, 422, "input[0][0] = -1 is outside"),
    ("ids too long, truncation off", "/embed", {"input": [[5] * 600], "truncation": False}, 422, "input[0] is 602"),
    ("2,049 id lists", V1, {"input": [[5]] * 2049}, 413, "2049 items, over the limit of 2048"),
    ("ids to tokenize", "/tokenize", {"input": [[1, 2]]}, 422, "input must be a string, a list of strings;"),
]

# Bodies for fuzzing: every field any route knows, in any JSON shape, plus raw bytes and text.
FIELDS = [
    "input",
    "model",
    "encoding_format",
    "dimensions",
    "prompt_name",
    "user",
    "pooling",
    "layers",
    "combine",
    "normalize",
    "max_length",
    "truncation",
    "outputs",
    "add_special_tokens",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["cls", "mean", "pooler", "concat", "float", "base64", "last_hidden_state", "hidden_states.1"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6).map(json.dumps),
    st.fixed_dictionaries({"input": st.lists(st.integers(-5, 40000), max_size=8)}).map(json.dumps),
    JSON.map(json.dumps),
    st.binary(max_size=200),
    st.text(max_size=200),
)
ROUTES = ["/v1/embeddings", "/embed", "/encode", "/tokenize"]


def as_bytes(body: Body | None) -> bytes | None:
    """A dict or list body as JSON, a string as UTF-8 (lone surrogates kept), bytes exactly as given."""
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    return body


@dataclass
class Server:
    """A running ``python -m bert_onnx serve``; ``log`` collects its stderr lines as they come."""

    process: subprocess.Popen[str]
    url: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return str(urlsplit(self.url).hostname)

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    def stderr(self) -> str:
        return "".join(self.log)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then :meth:`wait`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        """The exit code, once the server has exited (fail the test if it takes longer than ``timeout`` s)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the server was still running {timeout} s after SIGTERM\n{self.stderr()}")


def start_server(model_dir: Path, *args: str, env: dict[str, str | None] | None = None, timeout: float = 120) -> Server:
    """Start a server on a free port of 127.0.0.1 and wait (at most ``timeout`` s) for its "serving ... on URL"."""
    command = [sys.executable, "-m", "bert_onnx", "serve", str(model_dir), "--port", "0", *args]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )
    server = Server(process)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            server.log.append(line)
            found = re.search(r" on (http://\S+)", line)
            if found and not server.url:
                server.url = found.group(1)

    threading.Thread(target=read, daemon=True).start()
    wait_for(lambda: bool(server.url) or process.poll() is not None, timeout, "the server printing its address")
    if not server.url:
        process.wait(timeout=10)
        pytest.fail(f"bert-onnx serve exited with {process.returncode} before serving\n{server.stderr()}")
    return server


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> str:
        """The message of a JSON error answer (fails the test if the answer is not one)."""
        data = self.json()
        assert set(data) == {"error"} and isinstance(data["error"]["message"], str), data
        return str(data["error"]["message"])


def call(
    server: Server,
    method: str,
    path: str,
    body: Body | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> Reply:
    """One request on a fresh connection; the body as :func:`as_bytes` makes it."""
    data = as_bytes(body)
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def read_reply(sock: socket.socket) -> str:
    """A whole HTTP answer read from a raw socket (its head, then Content-Length bytes of body), as text."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    while found and len(body) < int(found.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("utf-8", "replace")


def metric(server: Server, name: str, headers: dict[str, str] | None = None) -> float:
    """The value of an unlabelled metric from ``GET /metrics``."""
    text = call(server, "GET", "/metrics", headers=headers).body.decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS`` in /proc/PID/status; ``VmHWM``: its peak so far), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")
