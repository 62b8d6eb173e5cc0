"""The one exception the exporter raises for bad input."""


class ExportError(Exception):
    """A source cannot be exported.

    The message names the file, tensor or config field at fault and, where it applies, what was
    expected and what was found.
    """
