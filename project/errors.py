"""`UserError`: a problem the user can fix (missing data, bad file, bad option).

The CLI prints its message alone, without a traceback, and exits with status 2. Raise it with a
message that says what is wrong and how to fix it. It is a ValueError, so code that validates
arguments with it reads as usual.
"""


class UserError(ValueError):
    pass
