"""Runs the original Python pulsar-relay (PyPI `pulsar-relay`) for tools/bench/vs-original.sh.

Imports the original's FastAPI app unchanged except for one switch: its slowapi rate limiter
(120 publishes and 5 logins per minute per client IP) is disabled, because under those limits a
load test would measure 429 answers. Nothing else of the original is altered; its settings come
from the PULSAR_* environment the bench script sets.

    python original_launcher.py PORT WORKERS

Uvicorn's worker processes import this module again by name, so every worker disables its own
limiter before serving.
"""

import sys

from pulsar_relay.api.limits import limiter
from pulsar_relay.main import app

limiter.enabled = False

__all__ = ["app"]

if __name__ == "__main__":
    import os

    import uvicorn

    port, workers = int(sys.argv[1]), int(sys.argv[2])
    uvicorn.run(
        "original_launcher:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host="127.0.0.1",
        port=port,
        workers=workers,
        # The relay under comparison logs no line per request either.
        access_log=False,
        log_level="warning",
    )
