"""
Text from outside (model files, peers' requests, frames) made fit for one log line.

A model file's class names and provenance, a peer's parameter name or a frame's encoding are
written by someone else: logged as they are, a newline forges a log line of its own (``[FATAL]
... [segmentation_node]``), ANSI escape codes repaint the terminal and one value can be megabytes
long. :func:`loggable` escapes every character that is not printable and cuts the text to a
bound, saying how long it was.
"""

from typing import Any

MAX_LOGGED_CHARS = 400  # one value in a log line is cut to this
MAX_LINE_CHARS = 4000  # and a line made of several such values


def loggable(value: Any, limit: int = MAX_LOGGED_CHARS) -> str:
    r"""
    Return ``str(value)`` on one line: non-printable characters escaped, at most ``limit`` long.

    Newlines, escape codes and other control or format characters become Python escapes
    (``\n``, ``\x1b``, ``\u202e``); longer text ends in ``... (N characters)``.
    """
    text = value if isinstance(value, str) else str(value)
    head = text[:limit]  # escape no more than is shown: the cost is bounded too
    if not head.isprintable():
        head = ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii')
                       for c in head)
    if len(head) <= limit and len(text) <= limit:
        return head
    return f'{head[:limit]}... ({len(text)} characters)'
