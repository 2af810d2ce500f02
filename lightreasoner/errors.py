"""The one exception users see: a one-line message naming the input and the problem."""


class LightReasonerError(Exception):
    """Bad input or a refused operation. The CLI prints ``error: <message>`` and exits with code 2."""
