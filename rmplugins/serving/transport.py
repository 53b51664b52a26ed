"""Serving an app over HTTP with the limits uvicorn lacks: a deadline for reading each request and a cap on
open connections (:func:`guarded_protocol`), the port bound before anything slow happens (:func:`bind`), and
:class:`BackgroundServer` for tests, benchmarks and notebooks."""

import logging
import threading
import time

logger = logging.getLogger("rmplugins.server")
access_logger = logging.getLogger("rmplugins.server.access")


def guarded_protocol(read_timeout: float = 30.0, max_connections: int = 1024):
    """uvicorn's h11 protocol with the two limits uvicorn lacks. A connection must finish sending its request
    (head and body) within ``read_timeout`` seconds of connecting or of its previous response, else it is closed:
    idle and 1-byte-per-second clients cannot hold sockets. Connections beyond ``max_connections`` are closed at
    once, so file descriptors stay free for the clients already served."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                logger.warning("connection from %s refused: %d open connections (--max-connections %d)",
                               self.client, len(self.connections) - 1, max_connections)
                transport.close()
                return
            self._arm_read_deadline()

        def _arm_read_deadline(self):
            self._read_deadline = self.loop.call_later(read_timeout, self._read_deadline_passed)

        def _read_deadline_passed(self):
            if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) and not self.transport.is_closing():
                access_logger.info("%s - - 408 closed: request not received within %gs (--read-timeout)",
                                   self.client[0] if self.client else "-", read_timeout)
                self.transport.close()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._read_deadline.cancel()
                self._arm_read_deadline()

        def connection_lost(self, exc):
            deadline = getattr(self, "_read_deadline", None)
            if deadline is not None:
                deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_config(app, *, host: str, port: int, read_timeout: float = 30.0, max_connections: int = 1024,
                   log_level: str = "warning"):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5, backlog=4096,
                          http=guarded_protocol(read_timeout, max_connections), access_log=False)


def reward_server(app, config):
    """uvicorn's server for ``app``, which on Ctrl-C / SIGTERM first answers the requests waiting for groups that
    can no longer complete (no new sample gets in), then stops as uvicorn does: without it a stop waited up to
    ``--group-timeout`` (120 s) with nothing said."""
    import uvicorn

    class RewardServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            service = getattr(app.state, "service", None)
            if service is not None:
                service.stopping()
            await super().shutdown(sockets)

    return RewardServer(config)


def bind(host: str, port: int):
    """A listening socket on ``host:port``, or a ValueError that says what to do (port busy, bad address)."""
    import errno
    import socket

    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port (0-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            fix = "another process holds the port: pick another --port (0: any free one)"
        elif err.errno == errno.EACCES:
            fix = "ports below 1024 need privileges: pick a --port of 1024 or more"
        else:  # a name that does not resolve, an address this machine does not have
            fix = "--host must be an address of this machine (127.0.0.1 or 0.0.0.0 for every interface)"
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}; {fix}") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread (tests, benchmarks, notebooks)::

        with BackgroundServer(app, port=0) as server:
            requests.post(server.url + "/get_reward", ...)
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 read_timeout: float = 30.0, max_connections: int = 1024):
        self.socket = bind(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = reward_server(app, uvicorn_config(app, host=host, port=self.port, read_timeout=read_timeout,
                                                        max_connections=max_connections, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                       name="rmplugins-server")

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the reward server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
