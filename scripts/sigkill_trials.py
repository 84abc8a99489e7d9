"""SIGKILL a process that saves a conversation over and over, at random moments; nothing may be lost.

Many trials of what tests/test_session_store.py::test_sigkill_during_save_leaves_a_complete_save does twice:
tests/helpers/save_loop.py saves one conversation with a 16 MiB cache in a loop and prints each save's number
once it is complete; it is killed at a random moment (most of a loop's time is spent inside a save), and
what is on disk must then load without any problem and be the last reported save or the one after it,
exactly (cache contents, ids, messages). A second kind of trial kills `mixchat chat --plain` while it saves
after each turn, and checks that every turn it reported as saved is still there.

usage: python scripts/sigkill_trials.py [--trials 50] [--chat-trials 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's mixchat, not an installed one
HELPERS = REPO / "tests" / "helpers"
sys.path.insert(0, str(HELPERS))
sys.path.insert(0, str(REPO / "tests"))

import save_loop  # noqa: E402


def save_trial(data: Path, rng: random.Random) -> tuple[bool, str]:
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "save_loop.py"), str(data)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    done: list[int] = []
    reader = threading.Thread(target=lambda: [done.append(int(x)) for x in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 120
    while len(done) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    if not done:
        proc.kill()
        return False, "the helper did not start saving"
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(5)
    try:
        loaded = save_loop.load(data)
        if loaded.problem is not None:
            return False, f"after save {done[-1]}: {loaded.problem}"
        n = save_loop.save_number(loaded.conversation)
        if n not in (done[-1], done[-1] + 1):
            return False, f"on disk: save {n}; last reported {done[-1]}"
        save_loop.check(loaded.conversation, n)
    except Exception as e:  # any failure to load is a loss
        return False, f"after save {done[-1]}: {type(e).__name__}: {e}"
    return True, f"killed after save {done[-1]}, found save {n}"


def chat_trial(data: Path, model: Path, rng: random.Random) -> tuple[bool, str]:
    """Kill `chat --plain` at a random moment while it answers and saves turn after turn."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixchat",
            "chat",
            "--plain",
            "--model",
            str(model),
            "--data-dir",
            str(data),
            "--conversation",
            "k",
            "--max-tokens",
            "3",
            "--temperature",
            "0",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"".join(f"turn {i}\n".encode() for i in range(200)))
    proc.stdin.flush()
    first = proc.stderr.readline()  # "saved conversation 'k' ..." after the first turn
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if b"saved conversation" not in first and data.exists() and not any(data.rglob("transcript.json")):
        return True, "killed before the first save"
    path = next(data.rglob("transcript.json"), None)
    if path is None:
        return False, "no transcript after a reported save"
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        return False, f"transcript unreadable: {e}"
    turns = [m["content"] for m in d["messages"] if m["role"] == "user"]
    if turns != [f"turn {i}" for i in range(len(turns))] or not turns:
        return False, f"turns on disk: {turns[:5]}..."
    # It must open again without any problem (cache and transcript belong together).
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixchat",
            "chat",
            "--plain",
            "--model",
            str(model),
            "--data-dir",
            str(data),
            "--resume",
            "k",
            "--max-tokens",
            "2",
        ],
        input=b"",
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    if check.returncode != 0 or b"rebuilding" in check.stderr or b"Traceback" in check.stderr:
        return False, f"resume after the kill: {check.stderr.decode()[-200:]}"
    return True, f"killed with {len(turns)} turns saved"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50, help="kills of the save loop (default 50)")
    ap.add_argument("--chat-trials", type=int, default=10, help="kills of chat --plain (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    work = Path(tempfile.mkdtemp(prefix="mixchat-sigkill-"))
    failures = 0
    try:
        data = work / "data"
        for i in range(opts.trials):
            ok, what = save_trial(data, rng)
            failures += not ok
            print(f"save loop {i + 1:3d}: {'ok  ' if ok else 'LOST'} {what}", flush=True)
        from session_support import make_checkpoint

        model = make_checkpoint(work / "model")
        for i in range(opts.chat_trials):
            chat_data = work / f"chat{i}"
            ok, what = chat_trial(chat_data, model, rng)
            failures += not ok
            print(f"chat      {i + 1:3d}: {'ok  ' if ok else 'LOST'} {what}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = opts.trials + opts.chat_trials
    print(
        f"{total} SIGKILLs ({opts.trials} during the save loop, {opts.chat_trials} during chat --plain): "
        f"{failures} lost"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    sys.exit(main())
