"""Stopping a run cleanly when it is pre-empted: SIGTERM or SIGINT -> finish the step, checkpoint, exit 0.

Cloud TPU VMs and SLURM jobs get SIGTERM shortly before the machine is taken away. Inside a
`with StopSignals() as stop:` block SIGTERM and SIGINT only record a request; the training loop
asks `stop.agreed()` after each step and, when it says yes, saves a checkpoint synchronously and
raises `TrainingStopped`, which the CLI prints as one line before exiting 0. A second SIGINT
aborts at once (KeyboardInterrupt).

Several processes must all stop after the same step, or those still training wait forever in the
next step's collectives. So each step all-reduces the processes' stop flags (a max over one int per
device) and the loop acts on the previous step's result: every process reads the same value at the
same step, and the host is never more than one step ahead of the devices.

JAX has a protocol of its own (`multihost_utils.reached_preemption_sync_point`, which orbax's
`CheckpointManager.reached_preemption` and MaxText use), and it works on CPU too; but it hears
only SIGTERM, through a C++ handler that any Python SIGTERM handler replaces, and it never fires
when the notice comes before a resumed run's first step (the sync point is then step 1). Our
handler replaces it, so orbax's check stays false and the loop's flag is the only stop signal.
"""

from __future__ import annotations

import signal
import threading

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """train() stopped on request after `step`, with a complete checkpoint at `checkpoint`."""

    def __init__(self, step: int, checkpoint, reason: str):
        super().__init__(f"stopped after step {step} ({reason}); checkpoint {checkpoint}; "
                         "run the same command again to resume")
        self.step, self.checkpoint, self.reason = step, checkpoint, reason


class StopSignals:
    """While active, SIGTERM and SIGINT ask the run to stop after the step in flight."""

    def __init__(self):
        self.received: str | None = None  # name of the first signal this process got
        self._previous = {}
        self._any_process = None  # several processes: flag -> the all-reduced flags (lazy)
        self._pending = None      # the all-reduce dispatched after the last step

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only there can Python trap
            self._previous = {s: signal.signal(s, self._handle) for s in HANDLED}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():  # None: a handler set outside Python
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C twice: do not wait for the checkpoint
        self.received = self.received or signal.Signals(signum).name

    def agreed(self) -> bool:
        """Whether to stop now, after the step just dispatched: with several processes every one
        gets the same answer at the same step (the stop requests known one step earlier)."""
        import jax
        if jax.process_count() == 1:
            return self.received is not None
        if self._any_process is None:
            self._any_process = any_process_reducer()
        previous, self._pending = self._pending, self._any_process(self.received is not None)
        return previous is not None and bool(previous)

    @property
    def reason(self) -> str:
        return self.received or "a signal to another process"


def any_process_reducer():
    """A function: this process's flag -> a replicated device scalar, whether any process's flag
    is set. It returns without waiting for the result (an all-reduce over all devices)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = Mesh(np.array(devices), ("all",))
    spread = NamedSharding(mesh, PartitionSpec("all"))
    any_set = jax.jit(lambda flags: flags.max(), out_shardings=NamedSharding(mesh, PartitionSpec()))

    def reduce(flag: bool):
        local = np.full(jax.local_device_count(), int(flag), np.int32)
        return any_set(jax.make_array_from_process_local_data(spread, local))
    return reduce
