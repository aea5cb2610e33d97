"""Interface layer: the command line and terminal progress."""
