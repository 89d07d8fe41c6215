"""The one error type of ``jaxrank.search``: a request the index cannot serve as asked."""


class SearchError(ValueError):
    """Bad queries or ``k``, an empty index, or an index file that is damaged or mismatched.

    The CLI prints it as ``jaxrank: error: ...`` (exit status 2); the message names the file,
    the row or the sizes involved."""
