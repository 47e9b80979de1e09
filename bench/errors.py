"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class BenchError(Exception):
    """Bad input from a user (unknown name, malformed option, unusable path): one clear line."""


class RunFailed(Exception):
    """A single run failed for a reason worth recording (NaN loss, divergence); the suite goes on."""
