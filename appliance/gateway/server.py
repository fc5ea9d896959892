"""Run the gateway in the foreground on uvicorn (uvloop + httptools), one process.

Everything that can be wrong before serving (a secret that is not there, a damaged keys file, a
port already taken, a certificate path that does not exist) is found by `preflight` and raised
as an `ApplianceError`, so `appliance gateway` reports it with its exit code instead of a log
line from inside uvicorn.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from appliance.errors import BadInputError, EnvironmentNotReadyError, OperationFailedError
from appliance.gateway.app import GatewayApp
from appliance.gateway.config import GatewayConfig
from appliance.gateway.keys import load_keyring
from appliance.gateway.policy import LoadSignal
from appliance.gateway.protocol import protocol_class
from appliance.gateway.state import read_fallback

log = logging.getLogger("appliance.gateway")


def preflight(
    config: GatewayConfig,
    host: str,
    port: int,
    *,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
) -> None:
    """Raise what would stop the gateway from serving; change nothing."""
    if config.remote is not None and config.remote.api_key is not None:
        config.remote.api_key.read("remote API key")
    if config.admin_key is not None:
        config.admin_key.read("gateway admin key")
    ring = load_keyring(config.keys_file)
    read_fallback(config.state_file, config.default_fallback_mode)
    if config.auth_required and not len(ring) and config.admin_key is None:
        log.warning(
            "no API keys in %s yet: every request will be refused until one is created "
            "with `appliance keys create NAME`",
            config.keys_file,
        )
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise BadInputError("TLS needs both a certificate and a key file")
    for path in (ssl_certfile, ssl_keyfile):
        if path is not None and not path.is_file():
            raise BadInputError(f"TLS file {path} does not exist")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror as error:  # before OSError: a name, not a socket, is wrong
            raise BadInputError(
                f"cannot listen on {host}: the name does not resolve ({error.strerror or error})",
                hint="give an address of this machine: 0.0.0.0 (every interface), 127.0.0.1, "
                "or one `ip -brief address` lists",
            ) from error
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise EnvironmentNotReadyError(
                    f"port {port} on {host} is already in use",
                    hint="stop what listens there (`ss -ltnp`) or choose another --port",
                ) from error
            if error.errno == errno.EACCES and port < 1024:
                hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
            else:
                hint = "give an address of this machine (`ip -brief address`) or 0.0.0.0"
            raise EnvironmentNotReadyError(
                f"cannot listen on {host}:{port}: {error.strerror or error}", hint=hint
            ) from error


def quiet_http_clients() -> None:
    """httpx logs a line per request at INFO: the monitor the gateway hosts polls every engine
    each second, which drowned the gateway's own lines. Its failures reach the log through the
    monitor's health transitions instead."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_server(
    app: GatewayApp,
    host: str,
    port: int,
    *,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    log_level: str = "info",
) -> uvicorn.Server:
    """A uvicorn server for `app`; `serve()` it on a running loop, or `run()` it."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # uvicorn's httptools protocol with limits on what a client may hold (`ClientLimits`).
        http=protocol_class(app.config.client),
        ws="none",  # the gateway serves no WebSockets; an upgrade is answered as plain HTTP
        lifespan="on",
        access_log=False,  # a line per request costs latency; /metrics counts them instead
        server_header=False,
        proxy_headers=False,  # the gateway is the edge; X-Forwarded-* from clients is not trusted
        log_config=None,  # our handlers, not uvicorn's; they never see headers
        log_level=log_level,
        backlog=2048,
        timeout_keep_alive=30,
        # SIGTERM (systemctl stop, apply restarting the unit) waits this long for requests in
        # flight, then closes what is left: an idle keep-alive TLS connection held it forever.
        timeout_graceful_shutdown=10,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )
    return uvicorn.Server(config)


def run_gateway(
    config: GatewayConfig,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - the gateway is the one port the appliance exposes
    port: int = 8080,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    log_level: str = "info",
    load_signal: LoadSignal | None = None,
    background: Sequence[Callable[[GatewayApp], Coroutine[Any, Any, None]]] = (),
) -> None:
    """Serve until SIGINT/SIGTERM (`appliance gateway`). Raises `ApplianceError` on setup errors."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    quiet_http_clients()
    preflight(config, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    app = GatewayApp(config, load_signal=load_signal, background=background)
    server = build_server(
        app, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_level=log_level
    )
    try:
        server.run()
    except SystemExit as exit_:  # uvicorn exits by itself when it cannot bind
        raise OperationFailedError(
            f"the gateway stopped while starting (exit {exit_.code})"
        ) from None
    if not server.started:
        raise OperationFailedError("the gateway did not start", hint="see the error logged above")
