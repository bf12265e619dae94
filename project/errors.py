"""`UserError`: a problem the user can fix (missing data, bad file, bad option).

The CLI prints its message alone, without a traceback, and exits with status 2. Raise it with a
message that says what is wrong and how to fix it.
"""


class UserError(Exception):
    pass
