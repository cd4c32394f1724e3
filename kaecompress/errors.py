"""The one error type for user mistakes: the CLI turns it into a one-line message and exit code 2."""

# What a refusal of training-side work in the runtime install (no torch) tells the user to run.
TRAINING_INSTALL = "pip install 'kaecompress[cpu,train]'"


class KaecError(Exception):
    """A mistake in the user's input (config, data, paths), described in one line."""


class Interrupted(Exception):
    """The user stopped the work (Ctrl-C) and what was done is kept; the CLI exits 130 with this message."""
