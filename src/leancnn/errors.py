"""The one exception type the command line turns into a single clear error line."""


class LeancnnError(Exception):
    """A user-facing error: bad input, bad config, bad file. The CLI prints its message, not a traceback."""


class ConfigError(LeancnnError, ValueError):
    """A config that does not match the schema: names the key path and what is allowed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt`` (``leancnn.cli.main`` installs the handler), so
    the same cleanup runs (``finally`` blocks, staged output folders, load processes, worker pools)."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a process killed by it
