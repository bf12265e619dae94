"""`UserError`: a problem the user can fix (missing data, bad file, bad option).

The CLI prints its message alone, without a traceback, and exits with status 2. Raise it with a
message that says what is wrong and how to fix it. It is a ValueError, so code that validates
arguments with it reads as usual.
"""


class UserError(ValueError):
    pass


def found_behind(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in `error`'s chain: itself, then what it was raised from or
    while handling (libraries wrap the error that says what went wrong in one that does not)."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, kinds):
            return seen
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None
