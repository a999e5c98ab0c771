"""Keeping secrets out of logs and MLflow params.

Values of environment variables whose names say they are secrets (``*TOKEN*``, ``*SECRET*``, ``*PASS*``,
``*CREDENTIAL*``, ``*API_KEY*``, ``*ACCESS_KEY*``, ``*PRIVATE_KEY*``) and the ``user:password@`` part of URLs
are replaced by ``***`` in every log record of the job's handlers and in every MLflow param it logs. Configs
reference secrets as ``${VAR}``, so this covers what a config can carry.
"""

from __future__ import annotations

import logging
import os
import re

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASS|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
MASK = "***"


def secret_values() -> list[str]:
    """The environment's secret values, longest first (so a secret containing another is masked whole)."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with URL credentials and the environment's secret values masked."""
    text = _USERINFO.sub(MASK + "@", text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in the fully formatted message of every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (default: the root logger), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
