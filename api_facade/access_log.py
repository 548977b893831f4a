"""Secrets kept out of the access log: a token sent in a query string (refused, but still written
in the request line) or any ``key=``, ``token=``, ``secret=``, ``password=`` parameter is logged as
``***``. Headers never reach uvicorn's access log."""

from __future__ import annotations

import logging
import re

_SECRET_PARAMETER = re.compile(r"(?i)([?&][^=&]*(?:token|key|secret|password|auth)[^=&]*=)[^&\s]*")


def redacted(path: str) -> str:
    return _SECRET_PARAMETER.sub(r"\1***", path)


class RedactSecrets(logging.Filter):
    """For uvicorn's access records, whose arguments are (client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redacted(args[2]), *args[3:])
        return True


def install() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())
