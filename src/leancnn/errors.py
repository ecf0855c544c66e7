"""The one exception type the command line turns into a single clear error line."""


class LeancnnError(Exception):
    """A user-facing error: bad input, bad config, bad file. The CLI prints its message, not a traceback."""


class ConfigError(LeancnnError, ValueError):
    """A config that does not match the schema: names the key path and what is allowed."""
