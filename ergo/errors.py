"""Errors a user can cause and fix; main.py prints them as one line, without a traceback."""


class ErgoError(Exception):
    """A user-facing failure: the message says what is wrong and, where it can, what to do."""


class CorpusError(ErgoError):
    """A corpus that cannot be read: wrong path, unknown format, undecodable or empty."""


class DownloadError(ErgoError):
    """A corpus download that failed or did not pass its integrity check."""

