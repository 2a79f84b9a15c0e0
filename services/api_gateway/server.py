"""Run api-gateway under uvicorn (its C HTTP parser and event loop) until SIGTERM/SIGINT."""

from __future__ import annotations

from types import FrameType

import uvicorn

from services.api_gateway.app import make_app
from trainmaster.settings import Settings, get_settings
from trainmaster.telemetry import configure_logging


class Server(uvicorn.Server):
    """uvicorn's server, exiting 0 after a graceful stop on SIGTERM/SIGINT as every service does
    (uvicorn raises the signal again once stopped, which a supervisor reads as a crash)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def main(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure_logging("api-gateway", settings.observability.log_level)
    config = uvicorn.Config(make_app(settings), host=settings.http.http_host, port=settings.http.http_port,
                            loop="uvloop", http="httptools", log_level="warning", access_log=False,
                            server_header=False,
                            # open event streams end at once on a stop: their clients reconnect with Last-Event-ID
                            timeout_graceful_shutdown=settings.bus.shutdown_grace_s)
    Server(config).run()
