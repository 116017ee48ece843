"""The one exception type every layer raises for bad input; CLIs turn it into a one-line message."""


class ChsError(ValueError):
    """A problem with the user's input (file, image, box, model, option) that has a one-line explanation."""


def first_line(e: BaseException, limit: int = 200, empty: str | None = None) -> str:
    """The first line of an exception's message (``empty``, else its type name, when it has none), cut to
    ``limit`` characters."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__ if empty is None else empty)[:limit]
