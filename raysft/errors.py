"""One exception type for every mistake a user can fix; the CLI turns it into one line and exit code 2."""


class RaysftError(Exception):
    """A problem with the user's input: the message names the problem and the fix, in one line."""

    exit_code = 2
