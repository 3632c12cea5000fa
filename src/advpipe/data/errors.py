"""The error every data source raises for a user-fixable problem (one-line message)."""


class DataError(ValueError):
    """Bad data or settings a user can fix; the message is one line naming the key or file."""
