"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input or an unsupported request; the message is shown to the user as is."""

    exit_code = 2
