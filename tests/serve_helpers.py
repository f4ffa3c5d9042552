"""Running ``bert-onnx serve`` as users do (a subprocess on a free loopback port) and talking to it over HTTP.

Plain functions for tests/test_serve.py; the stdlib's ``http.client`` sends exactly the bytes a test gives it, so
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
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> Reply:
    """One request on a fresh connection; a dict or list body is sent as JSON, bytes exactly as given."""
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
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
