"""The one error type for user mistakes: the CLI turns it into a one-line message and exit code 2."""


class KaecError(Exception):
    """A mistake in the user's input (config, data, paths), described in one line."""
