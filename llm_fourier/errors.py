"""The one exception type for mistakes a user can fix (bad input, missing model, ...).

The CLI prints its message as one sentence and exits with code 2, without a traceback.
"""


class UserError(Exception):
    """A problem the user caused and can fix; the message says what to do."""


class RunFailed(Exception):
    """A run that ended without every part finishing (e.g. report jobs that failed); the CLI
    prints the message and exits with code 1."""
