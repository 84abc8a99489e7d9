"""Process groups and the command channel of a pipeline.

Three groups, for three kinds of traffic that must not wait on each other:

- `control` (gloo, CPU): rank 0 broadcasts small int64 commands. It has a very long timeout, because the
  other ranks legitimately sit in it for as long as the user takes to type a message. A dead peer still
  ends that wait at once: gloo notices the closed socket (and torchrun's agent stops the survivors).
- `forward` (the default group; NCCL on CUDA, gloo on CPU): activations from rank r to r + 1, and rank 0's
  cache parts on their way out to the other ranks on restore.
- `back` (same backend): logits, routing traces and cache snapshots on their way back to rank 0.
  With NCCL each group has its own communicator and stream; sharing one between rank 0's outgoing
  activations and its incoming logits could deadlock once several micro-batches are in flight.

`forward` and `back` have a short timeout (MIXCHAT_PEER_TIMEOUT seconds, default 60): no data transfer
legitimately waits longer than one stage's share of a forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import IntEnum

import torch
import torch.distributed as dist

from mixchat.flags import flags

HEADER = 8  # int64 fields: op, six arguments, payload length
IDLE_TIMEOUT = timedelta(days=365)


class Op(IntEnum):
    EXIT = 0
    NEW_CACHE = 1  # cache id, rows, max context (0: the model's)
    FREE_CACHE = 2  # cache id
    FORWARD = 3  # cache id, sequences, tokens, last_only, traced; payload rows + seqlens + token ids
    SNAPSHOT = 4  # cache id, row
    RESTORE = 5  # cache id, row, seen, live
    RESET = 6  # cache id, row
    UNDO_POINT = 7  # cache id, row, tokens about to be pre-filled
    ROLLBACK = 8  # cache id
    SET_EXPERTS = 9  # k
    PEAK_MEMORY = 10  # every rank sends rank 0 its peak memory in bytes
    WEIGHT_BYTES = 11  # every rank sends rank 0 the bytes its stage's weights take (codes and scales)


def peer_timeout() -> timedelta:
    return timedelta(seconds=max(1.0, flags().peer_timeout))


@dataclass
class Command:
    op: Op
    args: list[int]  # six
    payload: list[int]


class SentWork:
    """A send's `dist.Work` that may be waited for from more than one place (the pending-sends list, and a
    graph's fences, see `cuda_graphs._Captured`); only the first wait reaches the backend. Gloo counts
    completions, so a second wait on its work would block for a send that never comes; with NCCL a wait
    orders the current stream after the send, which one wait does for every later use of that stream."""

    def __init__(self, work: dist.Work) -> None:
        self.work = work
        self.waited = False

    def wait(self) -> None:
        if not self.waited:
            self.waited = True
            self.work.wait()


@dataclass
class PipelineGroup:
    """This process's place in the pipeline and the groups it talks over."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    control: dist.ProcessGroup
    back: dist.ProcessGroup
    forward: dist.ProcessGroup | None = None  # None: the default group
    _posted: list[tuple[dist.Work, torch.Tensor]] = field(default_factory=list, repr=False)

    @property
    def last(self) -> int:
        return self.world - 1

    # ---- commands (rank 0 posts, the others receive) ------------------------------------------------------
    def post(self, op: Op, *args: int, payload: Sequence[int] = ()) -> None:
        """Broadcast a command without waiting for the receivers: a busy follower must not stall rank 0."""
        if len(args) > HEADER - 2:
            raise ValueError("too many command arguments")
        header = torch.zeros(HEADER, dtype=torch.long)
        header[0] = int(op)
        header[1 : 1 + len(args)] = torch.tensor([int(a) for a in args], dtype=torch.long)
        header[HEADER - 1] = len(payload)
        self._posted.append((dist.broadcast(header, 0, group=self.control, async_op=True), header))
        if payload:
            body = torch.tensor(list(payload), dtype=torch.long)
            self._posted.append((dist.broadcast(body, 0, group=self.control, async_op=True), body))
        if len(self._posted) > 64:
            self.flush()

    def flush(self) -> None:
        """Wait until every posted command has gone out."""
        posted, self._posted = self._posted, []
        for work, _ in posted:
            work.wait()

    def receive(self) -> Command:
        header = torch.empty(HEADER, dtype=torch.long)
        dist.broadcast(header, 0, group=self.control)
        fields = header.tolist()
        payload: list[int] = []
        if fields[HEADER - 1]:
            body = torch.empty(fields[HEADER - 1], dtype=torch.long)
            dist.broadcast(body, 0, group=self.control)
            payload = body.tolist()
        return Command(Op(fields[0]), fields[1 : HEADER - 1], payload)

    # ---- tensors ------------------------------------------------------------------------------------------
    def send(self, t: torch.Tensor, dst: int, back: bool = False) -> SentWork:
        """Start sending `t`; the caller keeps `t` alive until the returned work is waited for."""
        work = dist.isend(t.contiguous(), dst, group=self.back if back else self.forward)
        assert work is not None
        return SentWork(work)

    def recv(
        self, shape: Sequence[int], dtype: torch.dtype, src: int, back: bool = False, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Receive a tensor; into `out` when given (a captured graph's static input: no copy afterwards).

        With NCCL the wait orders the current stream after the transfer and returns without a host wait; the
        transfer itself is ordered after the work already queued on the current stream, so receiving into a
        buffer that an earlier queued graph replay reads is safe."""
        if out is not None:
            assert tuple(out.shape) == tuple(shape) and out.dtype == dtype and out.is_contiguous()
            t = out
        else:
            t = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        work = dist.irecv(t, src, group=self.back if back else self.forward)
        assert work is not None
        work.wait()
        return t


def init_group(use_cuda: bool) -> PipelineGroup:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...)."""
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device(f"cuda:{local_rank}")
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend, timeout=peer_timeout())
    control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    back = dist.new_group(backend=backend, timeout=peer_timeout())
    assert control is not None and back is not None
    return PipelineGroup(rank, world, local_rank, device, control, back)


def is_peer_failure(e: BaseException) -> bool:
    """Whether an exception means that the link to another rank broke (it died, or timed out)."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "timed out")
    )
