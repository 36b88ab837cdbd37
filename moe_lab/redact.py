"""The one rule for credentials in anything moe_lab writes or prints: the password of a URL
(`scheme://user:password@host/...`, a storage URL given on the command line, in a YAML file, in an
error message) becomes `***`. env.json's argv, error messages and the sweep's records pass through it;
the storage code masks parsed URLs with SQLAlchemy the same way (moe_lab.study.storage.masked_url)."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@ - the user part may be empty (scheme://:password@host); the password ends at the
# last '@' before the host (URL-encoded passwords hold no raw '@', '/' or whitespace).
URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s/@]+)(?P<tail>@)")


def redact(text: str) -> str:
    return URL_PASSWORD.sub(rf"\g<head>{MASK}\g<tail>", text)


def redact_all(value: Any) -> Any:
    """`value` with every string in it redacted (through dicts, lists and tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v) for v in value)
    return value
