"""The glue between `mixchat`'s command line and a pipeline: who joins, who leads, who follows.

Every rank parses the same command line. Rank 0 runs the command as usual; the runtime and `bench` ask
`current()` for the pipeline and build rank 0's stage instead of the whole model. The other ranks build
their own stage from the same options and follow rank 0's commands until it says EXIT. Commands that have
no use for a pipeline (`info`, `conversations`, `train`) run on rank 0 alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mixchat import distributed
from mixchat.distributed import lifecycle
from mixchat.distributed.comm import Op, PipelineGroup, init_group, is_peer_failure
from mixchat.distributed.partition import PartitionError, stage_part
from mixchat.errors import UserError
from mixchat.loader import Checkpoint, build_stage
from mixchat.model.args import ModelArgs
from mixchat.model.stage import StageModel, StagePart
from mixchat.quant.format import QuantSpec

PIPELINED_COMMANDS = ("generate", "chat", "bench", None)  # None: the chat app


@dataclass
class Pipeline:
    group: PipelineGroup
    model: object | None = None  # rank 0's PipelineModel, once built
    parts: list[StagePart] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.group.device

    def part_for(self, args: ModelArgs) -> StagePart:
        if args.per_layer_windows:
            # Each rank's cache would hold buffers of other sizes than its neighbours' (a snapshot's live
            # count differs by rank), which the pipeline's cache protocol does not carry yet.
            raise UserError(
                "models with per-layer sliding windows do not run in a torchrun pipeline yet; run them in one process"
            )
        try:
            self.parts = [stage_part(args.n_layers, self.group.world, r) for r in range(self.group.world)]
        except PartitionError as e:
            raise UserError(str(e)) from None
        return self.parts[self.group.rank]

    def stage_from_checkpoint(self, ckpt: Checkpoint, dtype: torch.dtype, quant: QuantSpec | None = None) -> StageModel:
        return build_stage(ckpt, self.part_for(ckpt.args), self.device, dtype, quant)

    def stage_from_shape(
        self, args: ModelArgs, dtype: torch.dtype, seed: int, quant: QuantSpec | None = None
    ) -> StageModel:
        from mixchat.shapes import random_stage_on

        seed = seed + 7919 * self.group.rank
        return random_stage_on(args, self.part_for(args), self.device, dtype, seed, quant)

    def lead(self, stage: StageModel):  # type: ignore[no-untyped-def]
        """Rank 0: wrap its stage as the model the engine drives."""
        from mixchat.distributed.driver import PipelineModel

        self.model = PipelineModel(stage, self.group, self.parts)
        return self.model


def run_pipelined(
    func: Callable[[argparse.Namespace], int], args: argparse.Namespace, guarded: Callable[..., int]
) -> int:
    """Run a parsed command line as one rank of a torchrun job."""
    rank = int(os.environ.get("RANK", "0"))
    command = getattr(args, "command", None)
    if command not in PIPELINED_COMMANDS:
        return guarded(func, args) if rank == 0 else 0
    lifecycle.install(rank, follower=rank != 0)
    if rank != 0:
        lifecycle.detach_stdin()
    checked = _check_options(args)
    if checked is not None:
        if rank == 0:
            print(f"mixchat: error: {checked}", file=sys.stderr)
        return 2
    from mixchat.runtime import resolve_device

    group = init_group(resolve_device(args.device).type == "cuda")
    pipeline = Pipeline(group)
    try:
        if rank != 0:
            return _follow(pipeline, args)
        distributed.set_current(pipeline)
        rc = guarded(func, args)
        _shutdown(pipeline)
        return rc
    except Exception as e:
        if is_peer_failure(e):
            lifecycle.stop(rank, "another rank exited")
        raise


def _check_options(args: argparse.Namespace) -> str | None:
    """Problems every rank can see from the command line alone (only rank 0 reports them)."""
    from mixchat.runtime import UserError, resolve_device

    try:
        resolve_device(args.device)
    except UserError as e:
        return str(e)
    if getattr(args, "command", None) == "bench" and getattr(args, "compare", None):
        return "--compare runs in one process; leave it out under torchrun"
    return None


def _shutdown(pipeline: Pipeline) -> None:
    import torch.distributed as dist

    from mixchat.distributed.driver import PipelineModel

    if isinstance(pipeline.model, PipelineModel):
        pipeline.model.shutdown()
    else:
        pipeline.group.post(Op.EXIT)
        pipeline.group.flush()
        dist.barrier(group=pipeline.group.control)
    dist.destroy_process_group()


def _follow(pipeline: Pipeline, args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from mixchat.distributed.follower import Follower

    rank = pipeline.group.rank
    try:
        stage = _build_follower_stage(pipeline, args)
        Follower(stage, pipeline.group).run()
    except Exception as e:
        if is_peer_failure(e):
            lifecycle.stop(rank, "another rank exited")
        lifecycle.stop(rank, f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", 2)
    dist.destroy_process_group()
    return 0


def _build_follower_stage(pipeline: Pipeline, args: argparse.Namespace) -> StageModel:
    from mixchat.loader import inspect_folder, quant_spec
    from mixchat.quant.format import spec_from_options
    from mixchat.runtime import resolve_dtype, resolve_model_path

    requested = spec_from_options(getattr(args, "quant", None), getattr(args, "group_size", None))
    shape = getattr(args, "shape", None) if args.command == "bench" else None
    if shape:
        from mixchat.shapes import named_shape

        margs = named_shape(shape)
        if args.max_context:
            margs.max_context = args.max_context
        quantized = requested is not None and requested.quantized
        return pipeline.stage_from_shape(
            margs, resolve_dtype(args.dtype, pipeline.device, quantized=quantized), args.seed, requested
        )
    ckpt = inspect_folder(resolve_model_path(args.model), max_context=args.max_context)
    spec = quant_spec(ckpt, requested)
    dtype = resolve_dtype(args.dtype, pipeline.device, ckpt, spec.quantized)
    return pipeline.stage_from_checkpoint(ckpt, dtype, spec)
