"""A kernel client for grading without idle waits: ready as soon as the kernel is.

jupyter_client's defaults suit interactive use. Once a kernel answers ``kernel_info``, the client
waits until IOPub has been quiet for 0.2 s. An autograde worker starts one kernel per submission, so
the wait adds 0.2 s per submission in which neither the worker nor the kernel uses a CPU. nbgrader's
``Execute`` (nbclient) takes its manager class from configuration (``Execute.kernel_manager_class``),
and the worker sets this one, built on public jupyter_client API only (a subclass that overrides the
public ``wait_for_ready``):

- :class:`GradingKernelClient` sends ``kernel_info_request`` until the reply arrives on shell *and* that
  request's ``status: idle`` arrives on IOPub. The kernel publishes this idle after everything it
  published before, so when the client sees it IOPub is subscribed (the first cell's output cannot be
  lost to a late ZMQ subscription) and every start-up message is already in; what is still queued is
  drained without waiting. nbclient ignores IOPub messages of other requests anyway. The error
  messages are jupyter_client's, which the worker's infrastructure patterns match.
"""

from __future__ import annotations

import time
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

__all__ = ["GradingKernelClient", "GradingKernelManager", "GRADING_EXECUTION"]

#: How long one kernel_info attempt waits for its reply on shell.
REPLY_SECONDS = 1.0
#: How long it then waits for an idle status on IOPub before sending another request (a kernel
#: publishes before the client's subscription has reached it, in which case the status is lost).
IDLE_SECONDS = 0.1


async def _next_matching(channel, wanted, until: float):
    """The next message on ``channel`` that ``wanted(msg)`` accepts, or None once ``until`` passes."""
    while (left := until - time.monotonic()) > 0:
        try:
            msg = await channel.get_msg(timeout=left)
        except Empty:
            return None
        if wanted(msg):
            return msg
    return None


class GradingKernelClient(AsyncKernelClient):
    """An async kernel client whose ``wait_for_ready`` returns as soon as the kernel is ready."""

    async def _kernel_info_answered(self, sent: set, deadline: float) -> bool:
        """Send a kernel_info request; True once a reply to one of the ``sent`` requests has come on
        shell and an idle status of one of them on IOPub."""
        sent.add(self.kernel_info())

        def ours(msg) -> bool:
            return msg.get("parent_header", {}).get("msg_id") in sent

        reply = await _next_matching(self.shell_channel, lambda m: ours(m) and m["msg_type"] == "kernel_info_reply",
                                     min(time.monotonic() + REPLY_SECONDS, deadline))
        if reply is None:
            return False
        idle = await _next_matching(
            self.iopub_channel,
            lambda m: ours(m) and m["msg_type"] == "status" and m["content"].get("execution_state") == "idle",
            min(time.monotonic() + IDLE_SECONDS, deadline))
        return idle is not None

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        """Return once the kernel has answered a kernel_info request on shell and IOPub."""
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        sent: set = set()
        while not await self._kernel_info_answered(sent, deadline):
            if not await self.is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError("Kernel didn't respond in %d seconds" % timeout)
        while True:  # start-up messages already queued: drop them, without waiting for more
            try:
                await self.iopub_channel.get_msg(timeout=0)
            except Empty:
                break


class GradingKernelManager(AsyncKernelManager):
    """An async kernel manager that hands out :class:`GradingKernelClient`."""

    client_class = DottedObjectName("normcourse.grading.kernel_manager.GradingKernelClient")
    client_factory = Type(klass=GradingKernelClient, default_value=GradingKernelClient)


#: nbclient settings (``NotebookClient`` keywords, or nbgrader's ``Execute`` config) for grading runs:
#: this manager, and a kernel killed once its notebook has run (every output is in by then) rather
#: than asked to shut down and waited for.
GRADING_EXECUTION = {"kernel_manager_class": f"{__name__}.GradingKernelManager", "shutdown_kernel": "immediate"}
