"""Which layers each rank of a pipeline holds.

Layers are dealt out in contiguous runs of ceil(n_layers / world) (the last rank may get fewer), so every
rank can work the partition out from the model's config alone and no rank has to be told it.
"""

from __future__ import annotations

from mixchat.model.stage import StagePart


class PartitionError(ValueError):
    """The model cannot be split over this many ranks."""


def stage_ranges(n_layers: int, world: int) -> list[range]:
    per = -(-n_layers // world)
    ranges = [range(min(r * per, n_layers), min((r + 1) * per, n_layers)) for r in range(world)]
    empty = [r for r, layers in enumerate(ranges) if len(layers) == 0]
    if empty:
        raise PartitionError(
            f"cannot split {n_layers} layers over {world} ranks ({per} per rank leaves rank {empty[0]} without "
            "layers); use fewer processes"
        )
    return ranges


def stage_part(n_layers: int, world: int, rank: int) -> StagePart:
    layers = stage_ranges(n_layers, world)[rank]
    return StagePart(layers=layers, first=rank == 0, last=rank == world - 1)


def micro_batches(n_seqs: int, m: int) -> list[range]:
    """Split the sequences of a pass into at most m contiguous groups of nearly equal size.

    Contiguous groups keep each group's logits a slice of the pass's, so results concatenate back in order.
    """
    m = max(1, min(m, n_seqs))
    return [range(n_seqs * i // m, n_seqs * (i + 1) // m) for i in range(m)]
