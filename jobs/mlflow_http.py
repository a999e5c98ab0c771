"""Talking to an MLflow server over HTTP with bounded waits and errors that name the HTTP failure.

MLflow's own client retries a failing server for about four minutes (seven retries with backoff) without a
log line, and then reports what it was asked (``model 'fraud' is not registered``) rather than what
happened (HTTP 503). Before a job uses a server, :func:`check_server` asks it one cheap registry question
within ``mlflow.timeout_s``, logging each retry, and names what it answered; :func:`bound_client_retries`
keeps MLflow's own later calls within the same budget.
"""

from __future__ import annotations

import logging
import math
import os
import time
from urllib.parse import urlsplit, urlunsplit

from batchscore.jobs.errors import ModelResolutionError, RegistryError

log = logging.getLogger(__name__)

# Answers worth retrying: overloaded, restarting or rate-limiting servers and gateways.
RETRYABLE = {429, 500, 502, 503, 504}
PROBE_PATH = "/api/2.0/mlflow/registered-models/search"


def shown_uri(uri: str) -> str:
    """``uri`` without credentials, query or fragment: safe to print."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def bound_client_retries(timeout_s: float) -> None:
    """Keep MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_*``) within about ``timeout_s`` seconds in all:
    backoff 1, 2, 4… s for as many retries as fit, each request waiting at most ``timeout_s``. Settings
    the environment already has are the user's and stand."""
    retries = max(0, int(math.log2(max(1.0, timeout_s))) - 1)  # 1 + 2 + … + 2^(n-1) < timeout_s
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", retries),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", max(1, math.ceil(timeout_s))),
    ):
        os.environ.setdefault(name, str(value))


def _is_mlflow_error(response: object) -> bool:
    """Whether an HTTP error answer is MLflow's own (a JSON body with an ``error_code``)."""
    try:
        body = response.json()  # type: ignore[attr-defined]
    except ValueError:
        return False
    return isinstance(body, dict) and "error_code" in body


def check_server(uri: str, timeout_s: float = 60.0, key: str = "mlflow.tracking_uri") -> None:
    """Fail within about ``timeout_s`` seconds, naming the server and what it answered, unless the MLflow
    server at ``uri`` (http or https; other URIs are not checked) answers its REST API. ``key``: the config
    key that gave the URI, for the message."""
    import requests

    if urlsplit(uri).scheme not in ("http", "https"):
        return
    shown = shown_uri(uri)
    deadline = time.monotonic() + timeout_s
    request_timeout = min(timeout_s, 10.0)
    attempt, delay = 0, 1.0
    while True:
        attempt += 1
        try:
            response = requests.get(
                uri.rstrip("/") + PROBE_PATH, params={"max_results": 1}, timeout=request_timeout
            )
        except requests.RequestException as exc:
            raise ModelResolutionError(
                f"cannot reach the MLflow server at {shown} ({type(exc).__name__}); expected a running "
                f"tracking/registry server there ({key} in the job config)"
            ) from None
        status = response.status_code
        if status < 400 or _is_mlflow_error(response):
            return
        reason = f"HTTP {status} {response.reason or ''}".strip()
        if status in (401, 403):
            raise RegistryError(
                f"the MLflow server at {shown} refused the job's credentials ({reason}); expected valid "
                "ones (MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            )
        if status not in RETRYABLE:
            raise RegistryError(
                f"{shown} answered {reason} to MLflow's REST API (GET {PROBE_PATH}); expected "
                f"an MLflow tracking/registry server at that URI ({key} in the job config)"
            )
        waited = timeout_s - (deadline - time.monotonic())
        if time.monotonic() + delay > deadline:
            raise RegistryError(
                f"the MLflow server at {shown} answered {reason} to {attempt} request(s) over "
                f"{waited:.0f} s; it is overloaded or failing. Nothing was scored; rerun when it answers "
                f"(mlflow.timeout_s={timeout_s:g} bounds the wait)"
            )
        log.warning(
            "MLflow server at %s answered %s; retrying in %.0f s (attempt %d, at most %.0f s in all)",
            shown,
            reason,
            delay,
            attempt + 1,
            timeout_s,
        )
        time.sleep(delay)
        delay = min(delay * 2, 16.0)


def check_servers(tracking_uri: str, registry_uri: str, timeout_s: float) -> None:
    """Bound MLflow's retries to ``timeout_s`` and :func:`check_server` the tracking and registry URIs."""
    bound_client_retries(timeout_s)
    for server, key in {tracking_uri: "mlflow.tracking_uri", registry_uri: "mlflow.registry_uri"}.items():
        check_server(server, timeout_s, key)
