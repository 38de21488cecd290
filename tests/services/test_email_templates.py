"""Email templates are found by their name, with no list to keep."""

import pytest
from jinja2 import TemplateNotFound

from app.services import email_templates


async def test_a_template_is_found_by_its_name() -> None:
    text, html = await email_templates.render(
        "welcome", name="Ada", link="https://example.com/verify-email?token=t", hours=24
    )
    assert "https://example.com/verify-email?token=t" in text
    assert "Ada" in html
    assert "<" in html


async def test_an_unknown_template_is_an_error() -> None:
    with pytest.raises(TemplateNotFound):
        await email_templates.render("no_such_email")
