"""sqladmin's templates: the list page with a cursor pager, all compiled before the first page.

sqladmin's list footer links numbered pages and sits in no template block, so the list page
the views use (CURSOR_LIST) is sqladmin's own with that footer swapped for
app/templates/sqladmin/cursor_pager.html, cut out when the admin is mounted.

sqladmin compiles a template at its first render, on the event loop: about 0.1 s for the list
page. Compiling them all when the admin is mounted keeps that off the loop; the compiled code
is kept for the process, so every later app (tests build many) loads it in a few milliseconds.
"""

from pathlib import Path

from jinja2 import (
    BaseLoader,
    BytecodeCache,
    ChoiceLoader,
    DictLoader,
    Environment,
    FileSystemLoader,
)
from jinja2.bccache import Bucket

CURSOR_LIST = "sqladmin/cursor_list.html"
PAGER = "sqladmin/cursor_pager.html"
APP_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
_FOOTER_START = '<div class="card-footer'


class _InMemoryBytecodeCache(BytecodeCache):
    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_compiled = _InMemoryBytecodeCache()


def install_cursor_list(env: Environment) -> None:
    """Adds CURSOR_LIST, and the app's sqladmin templates, in front of sqladmin's loader."""
    assert env.loader is not None  # sqladmin's Admin always sets one
    source, _, _ = env.loader.get_source(env, "sqladmin_original/list.html")
    loaders: list[BaseLoader] = [
        DictLoader({CURSOR_LIST: swap_footer(source)}),
        FileSystemLoader(APP_TEMPLATES),
        env.loader,
    ]
    env.loader = ChoiceLoader(loaders)


def swap_footer(source: str) -> str:
    """`source` with its pagination footer (the card-footer div) replaced by PAGER."""
    start = source.find(_FOOTER_START)
    if start < 0 or source.find(_FOOTER_START, start + 1) >= 0:
        raise RuntimeError("sqladmin's list.html changed: no single card-footer to replace")
    depth, at = 0, start
    while True:  # to the </div> that closes the footer
        opening, closing = source.find("<div", at), source.find("</div>", at)
        if closing < 0:
            raise RuntimeError("sqladmin's list.html changed: its card-footer never closes")
        if 0 <= opening < closing:
            depth, at = depth + 1, opening + 4
            continue
        depth, at = depth - 1, closing + len("</div>")
        if depth == 0:
            return source[:start] + "{% include '" + PAGER + "' %}" + source[at:]


def precompile(env: Environment) -> None:
    env.bytecode_cache = _compiled
    for name in env.list_templates(filter_func=lambda name: name.startswith("sqladmin/")):
        env.get_template(name)
