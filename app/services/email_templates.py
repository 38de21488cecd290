"""The email templates under app/templates/email/, found by name: NAME.txt and NAME.html.

Each is read and compiled on a worker thread the first time a job asks for it, then kept:
reading files inside a job would block the event loop, and loading them all at import would
be work every process pays for, jobs or not.
"""

import asyncio
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, Template, select_autoescape

DIRECTORY = Path(__file__).resolve().parents[1] / "templates" / "email"

_loaded: dict[str, tuple[Template, Template]] = {}


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(DIRECTORY),
        autoescape=select_autoescape(["html"]),
        auto_reload=False,  # a loaded template is never looked at on disk again
    )


def _load(name: str) -> tuple[Template, Template]:
    environment = _environment()
    return environment.get_template(f"{name}.txt"), environment.get_template(f"{name}.html")


async def render(template: str, **values: Any) -> tuple[str, str]:
    """The text and HTML bodies of the email `template`."""
    templates = _loaded.get(template)
    if templates is None:
        templates = _loaded[template] = await asyncio.to_thread(_load, template)
    text, html = templates
    return text.render(**values), html.render(**values)
