"""Pipeline-parallel inference (mixchat.distributed) on the CPU: two gloo ranks under torchrun.

The reference is always one process on the same checkpoint: the same tokens, routing and saved
conversations, and logits within 1e-5. A conversation saved by either side resumes on the other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from session_support import REPO, make_checkpoint

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

from pipeline_scenarios import (
    FOUR,
    cancelled_prefill,
    conversation,
    generate_packed,
    generate_split,
    resumed,
    runtime,
)

from mixchat.distributed.partition import PartitionError, micro_batches, stage_ranges

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "MIXCHAT_PEER_TIMEOUT": "20",
    }


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """The one-process references run on one thread, as each rank does (OMP_NUM_THREADS=1 in `env`): float32
    matmuls split over two threads round apart at the 1e-5 level on some CPUs (1.16e-5 seen), which is the
    tolerance here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_partition() -> None:
    assert stage_ranges(32, 2) == [range(0, 16), range(16, 32)]
    assert stage_ranges(5, 2) == [range(0, 3), range(3, 5)]
    assert stage_ranges(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(PartitionError):
        stage_ranges(3, 4)  # ceil(3/4) = 1 per rank leaves the fourth without layers
    assert micro_batches(5, 2) == [range(0, 2), range(2, 5)]
    assert micro_batches(1, 4) == [range(0, 1)]


def assert_same(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], prefix: str, into: str, atol: float = 1e-5
) -> None:
    keys = sorted(k for k in ours if k.startswith(prefix))
    assert keys
    mapped = {into + k[len(prefix) :] for k in keys}
    parts = {k.split(".")[1] for k in mapped}  # "ids", "logits", ... or "turn2", "turn3"
    assert mapped == {k for k in theirs if k.startswith(into) and k.split(".")[1] in parts}, "other passes"
    for k in keys:
        a, b = ours[k], theirs[into + k[len(prefix) :]]
        assert a.shape == b.shape, k
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=f"{k}: max difference {(a - b).abs().max():.2e}")
        else:
            assert torch.equal(a, b), k


def micro_batch_references(rt: Any) -> dict[str, torch.Tensor]:
    """The four-sequence run in one process: passes whole ("four"), and cut as the pipeline cuts them ("split")."""
    return generate_packed(rt, "four", FOUR) | generate_split(rt, "split", 2)


def assert_micro_batched(pp: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Four sequences of 2 to 6 pre-fill chunks, in micro-batches of two through pre-fill and decode: the
    tokens, routing and logits of every pass equal one process's running the same passes within 1e-5 (they
    are identical here), and one process's whole passes in tokens and routing, with logits within 3e-5:
    float32 matmuls over other row counts round apart at the 1e-5 level, in one process as well."""
    assert_same(pp, ref, "four2.", "split.")
    assert_same(pp, ref, "four2.", "four.", atol=3e-5)
    passes = sum(k.startswith("four2.logits.") for k in pp)
    assert int(pp["count.four2.submitted"]) > passes, "no pass was cut into micro-batches"


def test_two_ranks_match_one_process(ckpt: Path, tmp_path: Path) -> None:
    rt = runtime(ckpt)
    ref = generate_packed(rt, "gen") | micro_batch_references(rt) | cancelled_prefill(rt, "cancel")
    ref |= conversation(rt, tmp_path, "single", "conv")  # saves 'single' after turn two
    out = tmp_path / "pipeline.safetensors"
    proc = subprocess.run(
        [*TORCHRUN, str(REPO / "tests" / "helpers" / "pipeline_worker.py"), str(ckpt), str(out), str(tmp_path)],
        capture_output=True,
        env=env(),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    pp = load_file(str(out))
    assert_same(pp, ref, "gen1.", "gen.")  # packed prompts, one pass per step
    # The same, split into two micro-batches. Each micro-batch is its own pass, so the matmul and attention
    # kernels see other shapes than in the one-process batch and round differently (measured 1.04e-5 at
    # most); the token ids and routing must still be identical.
    assert_same(pp, ref, "gen2.", "gen.", atol=3e-5)
    assert_micro_batched(pp, ref)
    assert_same(pp, ref, "cancel.", "cancel.")  # a streamed pre-fill cancelled: as if the turn was never sent
    assert_same(pp, ref, "conv.", "conv.")  # four turns; after each, logits from a restored copy of the cache
    assert_same(pp, ref, "resumed.", "conv.")  # saved by one process, resumed on two ranks
    back = resumed(rt, tmp_path, "pipeline", "back")  # saved on two ranks, resumed by one process
    assert_same(back, ref, "back.", "conv.")


def test_stage_graph_steps_over_gloo(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MIXCHAT_CUDA_GRAPHS=eager: every rank runs its decode steps through `GraphDecoder.run_stage`, the GPU
    path's code and static-buffer protocol (receive into the step's input, send from its outputs, stacked
    routing), without capturing; the one-process reference runs the whole model's graph step alike."""
    monkeypatch.setenv("MIXCHAT_CUDA_GRAPHS", "eager")
    rt = runtime(ckpt)
    assert rt.engine.graph_decoder is not None
    ref = generate_packed(rt, "gen") | micro_batch_references(rt)
    ref |= conversation(rt, tmp_path, "single", "conv")
    out = tmp_path / "pipeline.safetensors"
    proc = subprocess.run(
        [*TORCHRUN, str(REPO / "tests" / "helpers" / "pipeline_worker.py"), str(ckpt), str(out), str(tmp_path)],
        capture_output=True,
        env=env(),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    pp = load_file(str(out))
    assert int(pp["stage_graphs"]) > 0  # rank 0 decoded through its stage's graph step
    assert_same(pp, ref, "gen1.", "gen.")
    assert_same(pp, ref, "gen2.", "gen.", atol=3e-5)  # micro-batches: two graphs (row subsets) per stage
    assert_micro_batched(pp, ref)
    assert int(pp["count.four2.subset_graphs"]) >= 2  # the micro-batches' decode steps replayed subset graphs
    assert_same(pp, ref, "conv.", "conv.")
    assert_same(pp, ref, "resumed.", "conv.")


def test_chat_plain_from_a_pipe_shows_every_layer(ckpt: Path, tmp_path: Path) -> None:
    stdin = b"Hello\nTell me more\n/stats\n"
    opts = ["chat", "--plain", "--model", str(ckpt), "--device", "cpu", "--temperature", "0", "--max-tokens", "8"]
    one = subprocess.run(
        [sys.executable, "-m", "mixchat", *opts, "--data-dir", str(tmp_path / "one")],
        input=stdin,
        capture_output=True,
        env=env(),
        cwd=REPO,
        timeout=120,
    )
    two = subprocess.run(
        [*TORCHRUN, "-m", "mixchat", *opts, "--data-dir", str(tmp_path / "two")],
        input=stdin,
        capture_output=True,
        env=env(),
        cwd=REPO,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    assert two.stdout == one.stdout and two.stdout.count(b"\n") == 2
    err = two.stderr.decode()
    assert "\n  L0 " in err and "\n  L1 " in err  # layer 1 lives on rank 1; its routing reached rank 0


def _rank_pid(launcher: int, rank: int) -> int:
    for _ in range(100):
        kids = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split()
        for pid in kids:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} not found")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_others(ckpt: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *TORCHRUN,
            "-m",
            "mixchat",
            "chat",
            "--plain",
            "--model",
            str(ckpt),
            "--device",
            "cpu",
            "--data-dir",
            str(tmp_path),
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(b"Hello\n")
        proc.stdin.flush()
        assert proc.stdout.readline()  # a reply: the pipeline works, and rank 0 now waits on the open pipe
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
        start = time.monotonic()
        proc.wait(timeout=15)
        assert time.monotonic() - start < 10
        err = proc.stderr.read().decode()
        assert proc.returncode != 0
        assert "mixchat: rank 0 stopping: another rank exited" in err, err[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
