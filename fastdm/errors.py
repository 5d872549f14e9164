"""The one exception type for bad user input.

The CLI turns a FastDMError into a single line on stderr and exit status 2, so every
check of user input (paths, names, sizes, files) raises this with a message that names
the problem and the fix.
"""


class FastDMError(Exception):
    """A problem with the user's input or environment, explained in one line."""
