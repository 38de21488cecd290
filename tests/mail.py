"""Reading the emails the service sends."""

import re
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit


def text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "the email has no text part"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # as a reader sees it: the wire's CRLF is framing


def link_in(message: EmailMessage) -> str:
    match = re.search(r"https?://\S+", text_body(message))
    assert match, "the email has no link"
    return match.group(0)


def token_in(message: EmailMessage) -> str:
    return parse_qs(urlsplit(link_in(message)).query)["token"][0]


def path_and_query(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"
