"""The decode thread count follows whichever count the timings say is faster, and notices a change."""

from __future__ import annotations

import torch

from mixchat.engine import Engine
from mixchat.exec import thread_choice
from mixchat.exec.thread_choice import ThreadChooser
from mixchat.model.transformer import Transformer


def drive(chooser: ThreadChooser, cost: dict[int, float], steps: int, key: int = 1) -> list[int]:
    picks = []
    for _ in range(steps):
        n = chooser.pick(key)
        chooser.record(key, n, cost[n])
        picks.append(n)
    return picks


def test_runs_the_faster_count_and_still_explores() -> None:
    c = ThreadChooser([2, 1, 2])
    assert c.choices == [1, 2]
    picks = drive(c, {1: 3.0, 2: 2.0}, 200)
    assert picks[:4] == [1, 1, 2, 2]  # each count is timed first; its first step (warm-up) is not kept
    assert c.best(1) == 2
    ones = picks[2:].count(1)
    assert 0 < ones <= 200 // thread_choice.EXPLORE_EVERY + 1  # one exploring step in EXPLORE_EVERY


def test_tries_of_a_far_slower_count_become_rare() -> None:
    c = ThreadChooser([1, 2])
    picks = drive(c, {1: 1.0, 2: 50.0}, 4000)  # two threads stall badly beside a busy process
    tries = picks[4:].count(2)
    assert c.best(1) == 1 and 0 < tries <= 8  # gaps of 32, 64, ... 2048 steps


def test_switches_when_the_machine_changes() -> None:
    c = ThreadChooser([1, 2])
    drive(c, {1: 3.0, 2: 2.0}, 100)
    assert c.best(1) == 2
    picks = drive(c, {1: 3.0, 2: 9.0}, 40)  # a busy core: two threads now stall
    assert c.best(1) == 1 and picks[-5:] == [1] * 5
    drive(c, {1: 3.0, 2: 2.0}, 6 * thread_choice.EXPLORE_EVERY)  # quiet again: back to two, by exploring
    assert c.best(1) == 2


def test_step_sizes_are_timed_apart_and_one_choice_is_fixed() -> None:
    c = ThreadChooser([1, 2])
    drive(c, {1: 1.0, 2: 2.0}, 10, key=1)
    drive(c, {1: 2.0, 2: 1.0}, 10, key=8)
    assert (c.best(1), c.best(8)) == (1, 2)
    assert drive(ThreadChooser([1]), {1: 1.0}, 5) == [1] * 5


def test_engine_times_small_cpu_decode_steps(mixtral_model: Transformer) -> None:
    engine = Engine(mixtral_model, None, eos_id=-1)
    assert engine.step_threads is not None
    before = torch.get_num_threads()
    cache = engine.new_cache(batch=1)
    engine.forward(cache, [0], [[5, 6, 7]])
    for t in (8, 9, 10):
        engine.forward(cache, [0], [[t]])
    assert torch.get_num_threads() == before  # restored after each step
    assert {k for k, _ in engine.step_threads._warmed} == {1, 3}  # keyed by tokens in the step


def test_the_tui_keeps_small_decode_steps_on_one_thread(mixtral_model: Transformer) -> None:
    engine = Engine(mixtral_model, None, eos_id=-1)
    engine.leave_a_core_for_the_ui()
    assert engine.step_threads is not None and engine.step_threads.choices == [1]
    assert engine.max_threads == max(1, torch.get_num_threads() - 1)
