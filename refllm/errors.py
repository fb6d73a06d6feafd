"""The one base class for errors a user can cause: a bad file, a bad name, a bad option.

The CLI turns a RefllmError into one line on stderr and exit code 2, with no traceback.
Anything else that escapes is a bug in refllm.
"""


class RefllmError(Exception):
    """An error in what the user gave refllm, explained in its message."""
