"""Running the application under uvicorn: bind, serve, and stop gracefully on SIGTERM or Ctrl-C.

uvicorn does the graceful part: on the signal it closes the listening socket, lets every request it has accepted
finish and answer, closes idle connections, then runs the application's shutdown (which stops the batcher).
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from bert_onnx.errors import InvalidValueError
from bert_onnx.runtime.encoder import Encoder
from bert_onnx.runtime.recipe import EmbedRecipe
from bert_onnx.serve.app import EmbeddingServer
from bert_onnx.serve.settings import ServeSettings

log = logging.getLogger(__name__)

BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port); ``InvalidValueError`` naming the address if
    not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidValueError(f"host={host!r}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)  # connections queue from here on, before uvicorn starts accepting them
    except OSError as exc:
        sock.close()
        raise InvalidValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    encoder: Encoder,
    recipe: EmbedRecipe,
    settings: ServeSettings,
    listening: Callable[[str], None] | None = None,
    model_name: str | None = None,
) -> None:
    """Serve ``encoder`` until SIGTERM or Ctrl-C, then answer every accepted request and return.

    ``listening(url)`` is called once the socket accepts connections (with the real port when ``settings.port``
    is 0). Returns normally after a graceful stop, so the command exits 0.
    """
    server = EmbeddingServer(encoder, recipe, settings, model_name=model_name)
    sock = bind(settings.host, settings.port)
    config = uvicorn.Config(
        server.app,
        log_config=None,  # the library's logging stays the caller's; uvicorn's own records go to its loggers
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=None,  # wait for every accepted request, however long it takes
    )
    if listening is not None:
        listening(url(sock))
    # uvicorn catches SIGTERM/SIGINT while it runs and, after its graceful shutdown, raises the signal again under
    # the handler that was installed before it started. Under the default handler, SIGTERM would then kill the
    # process (exit status -15) after a clean stop; this handler lets the stop end as a normal return instead.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by signal %d", signum)
