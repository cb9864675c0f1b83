"""Errors meant for people: one line that says what was wrong and what to do."""


class BenchmarkError(Exception):
    """A problem with the user's input or environment, not a bug.

    The CLI prints the message as one line and exits with status 2. The message
    says what was wrong and what to do about it.
    """

    exit_status = 2


class DataError(BenchmarkError):
    """Benchmark data is missing, corrupt, or cannot be downloaded."""


class PluginError(BenchmarkError):
    """A method plugin breaks the plugin contract."""


class StoreError(BenchmarkError):
    """The results store cannot be opened, read or written."""
