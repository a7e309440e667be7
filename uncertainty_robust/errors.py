"""One error convention for the whole project.

Helpers raise a :class:`UserError` (or a subclass) whose ``str()`` is one line naming what is wrong
and what is allowed; only a ``main()`` catches it, prints ``error: <line>`` and exits 2. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A problem the user can fix (bad input, missing data, a busy run), said in one line."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())  # always a single line


class ConfigError(UserError, ValueError):
    """A bad config value. ``key`` is the field (``attacks[1].name``); ``str()`` is ``key: message``."""

    def __init__(self, key: str, msg: str):
        self.key = key
        self.msg = msg
        super().__init__(f"{key}: {msg}")


def exit_on_user_error(main):
    """Decorator for a ``main(argv) -> int``: a :class:`UserError` becomes ``error: ...`` and exit 2."""

    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__ = main.__name__, main.__doc__, main
    return wrapped
