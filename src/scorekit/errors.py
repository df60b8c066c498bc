"""The one exception type scorekit raises for mistakes a user can make."""


class ScorekitError(ValueError):
    """A bad argument, file or configuration. The message names the input and the fix.

    The command line prints the message on one line and exits with status 2.
    """
