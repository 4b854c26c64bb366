"""The one exception the data layer raises.

The command line prints a DataError as a single line and exits non-zero, so
every message says what was expected, what was found and what to do next.
"""


class DataError(Exception):
    """A data set, file or argument the data layer cannot use.

    >>> str(DataError("the file x.csv is empty; pass a file with a header row and data"))
    'the file x.csv is empty; pass a file with a header row and data'
    """
