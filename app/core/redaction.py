"""Credentials and addresses that can hide inside a text: blanked before a log line, a span or
a stored error keeps it."""

import re

# Bearer values, JWTs, passwords in URLs, tokens in query strings (reset and verification links).
SENSITIVE_TEXT = [
    (re.compile(r"(?i)(bearer\s+)[\w.~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*"), "[redacted-jwt]"),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1[redacted]@"),
    (re.compile(r"(?i)([?&](?:token|password|secret)=)[^&\s\"']+"), r"\1[redacted]"),
]

# An email address as a server reply quotes it: bare or in <>, a local part quoted or not
# (SMTPUTF8 ones included), a domain name or an address literal. Generous on purpose: a masked
# word too many costs nothing, an address let through is a user's.
_LOCAL_PART = r"""(?:"[^"]*"|[^\s<>"'(),;:\[\]@]+)"""
_DOMAIN = r"""(?:\[[^\]\s]*\]|[^\s<>"'(),;:@]+)"""
EMAIL_ADDRESS = re.compile(f"{_LOCAL_PART}@{_DOMAIN}")
MASKED_ADDRESS = "[address]"


def redact_text(text: str) -> str:
    for pattern, replacement in SENSITIVE_TEXT:
        text = pattern.sub(replacement, text)
    return text


def mask_addresses(text: str) -> str:
    """The text with every email address in it replaced by MASKED_ADDRESS."""
    return EMAIL_ADDRESS.sub(MASKED_ADDRESS, text)
