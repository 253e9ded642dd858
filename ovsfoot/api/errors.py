"""The library's errors: all are `Error`, which CNI plugins catch."""


class Error(Exception):
    """Anything this library refuses or cannot do."""


class DatabaseUnavailable(Error):
    """The Open_vSwitch database cannot be reached (or did not answer in time)."""


class UnknownInterface(Error):
    """No OVS Interface matches."""


class AmbiguousInterface(Error):
    """More than one OVS Interface matches."""


class MalformedValue(Error):
    """A value to write is invalid, or a published key does not follow the contract."""


class Timeout(Error):
    """A transaction did not complete in time."""
