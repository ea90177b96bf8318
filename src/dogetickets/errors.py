"""The one user-facing failure: a one-line message, exit code 2 at the CLI, no traceback."""


class DogeError(Exception):
    """A problem with the user's input (data, config, paths) that they can fix.

    The message is one line and names the file and line, or the config key, at fault.
    """


class TrainingFailed(DogeError):
    """One training of a sweep failed (e.g. a non-finite loss); the sweep goes on with the others."""
