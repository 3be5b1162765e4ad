"""Model and file work off the UI thread: a job runs in a worker thread and its
result comes back as a message; a failure comes back as WorkFailed and shows as
a notification, never a traceback."""
from __future__ import annotations

from typing import Callable

from textual.dom import DOMNode
from textual.message import Message
from textual.worker import get_current_worker

from ..errors import TinymechError
from ..text import printable
from .messages import WorkFailed


def start_job(node: DOMNode, name: str, group: str, what: str, job: Callable[[], object],
              deliver: Callable[[object], Message]) -> None:
    """Run job() in a worker thread and post deliver(result) to node, unless a newer
    job of the group cancelled it; a failure posts WorkFailed(what, one line)."""

    def work():
        try:
            result = job()
        except Exception as e:  # the UI's boundary: any failure becomes a notification
            node.post_message(WorkFailed(what, one_line(e)))
            return
        if not get_current_worker().is_cancelled:
            node.post_message(deliver(result))

    node.run_worker(work, name=name, group=group, exclusive=True, thread=True, exit_on_error=False)


def notify_failure(node: DOMNode, what: str, error: str) -> None:
    # the message may quote a file's strings: shown as text, never as markup or escapes
    node.notify(printable(error), title=f"{what} failed", severity="error", timeout=8, markup=False)


def one_line(error: Exception) -> str:
    """A notification's text: tinymech's own messages as they are, others with their type."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(error, TinymechError) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
