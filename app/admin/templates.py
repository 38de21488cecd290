"""sqladmin's templates, compiled before the first page is served.

sqladmin compiles a template at its first render, on the event loop: about 0.1 s for the list
page. Compiling them all when the admin is mounted keeps that off the loop; the compiled code
is kept for the process, so every later app (tests build many) loads it in a few milliseconds.
"""

from jinja2 import BytecodeCache, Environment
from jinja2.bccache import Bucket


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


def precompile(env: Environment) -> None:
    env.bytecode_cache = _compiled
    for name in env.list_templates(filter_func=lambda name: name.startswith("sqladmin/")):
        env.get_template(name)
