"""Control on the side of the data path: unixctl commands and the CLI."""
