"""The one exception type datacull raises for bad input or an unusable environment."""


class DatacullError(Exception):
    """A problem the user can fix; the CLI prints its message as one line and exits with status 2."""
