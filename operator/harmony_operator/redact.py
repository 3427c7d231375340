"""Credentials out of every message the operator writes (conditions, events, logs of errors).

A URL may carry `user:password@` (a Prometheus or MLflow URL with basic auth), a query parameter such as
`?token=...` or `X-Amz-Signature=...` (presigned object-store URLs), or an `Authorization` header echoed in
an error. `redact` replaces each secret with `***` and leaves the rest readable.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&](?:access_token|token|password|passwd|secret|api[_-]?key|x-amz-signature|"
    r"x-amz-credential|x-amz-security-token|sig|signature)=)[^&\s'\"]+"
)
_AUTH_HEADER = re.compile(
    r"(?i)(?P<key>(?:authorization|proxy-authorization)['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+"
)


def redact(text: str) -> str:
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _QUERY_SECRET.sub(r"\g<key>***", text)
    return _AUTH_HEADER.sub(r"\g<key>***", text)
