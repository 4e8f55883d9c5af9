"""The one exception type of user errors.

Anything a user can get wrong (a bad option, an unusable file, an invalid config) raises
:class:`LapsdError` or a subclass, with a message that says what is wrong, where, and how to fix
it. The ``lapsd`` command prints such an error as one line and exits with status 2; any other
exception is a bug and shows its traceback.
"""

from __future__ import annotations


class LapsdError(ValueError):
    """A user error (see the module docstring).

    It is a :class:`ValueError` so that library callers who catch bad values keep working.
    """


def require_extra(extra: str, *modules: str) -> None:
    """Raise :class:`LapsdError` naming the pip extra when one of ``modules`` is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise LapsdError(f"this needs the '{extra}' extra ({', '.join(missing)} not installed): "
                         f"pip install 'lapsd[{extra}]'")
