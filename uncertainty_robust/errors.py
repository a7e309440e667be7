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


class DiskFull(UserError):
    """A file could not be written because its filesystem is full (or over quota): names the file
    and the free space there (``checkpoint.atomic_write`` raises it; ranks do not retry it)."""

    def __init__(self, path, free=None):
        self.path, self.free = path, free
        room = "" if free is None else f" ({self.human(free)} free there)"
        super().__init__(
            f"disk full: could not write {path}{room}; free space and run it again (a sweep: relaunch "
            "with the same --name): what was finished and checkpointed is kept"
        )

    def __reduce__(self):  # pickled (Ray, multiprocessing) with its arguments, not its message
        return (type(self), (self.path, self.free))

    @staticmethod
    def human(n: float) -> str:
        """``123 B``, ``4.5 kB``, ``121.0 MB``, ``2.3 GB`` (powers of 1000)."""
        for unit in ("B", "kB", "MB", "GB", "TB"):
            if abs(n) < 1000 or unit == "TB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1000
        raise AssertionError("unreachable")


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
