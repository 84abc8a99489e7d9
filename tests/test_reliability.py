"""Issue 13: no silent loss, no traceback. Each test is one failure a hostile-but-realistic user found.

The CLI tests run `python -m mixchat` as real processes (signals, pipes, closed and full streams only mean
something there); failures that need a broken disk are faked in-process (the tests run as root, where
chmod blocks nothing), by making the very call that would fail raise the OSError the kernel would give.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from session_support import REPO, drain, make_checkpoint, runtime

from mixchat.cli.main import main
from mixchat.session import ChatSettings, Conversation, ConversationStore
from mixchat.session.conversation import encode_transcript
from mixchat.session.files import data_dir

TRACEBACK_MARKS = ("Traceback", "terminate called", "pybind11", "Aborted")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def full_attention_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("full"), window=None)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}


def mixchat(*args: str, stdin: bytes = b"", **kw) -> subprocess.CompletedProcess[bytes]:  # type: ignore[no-untyped-def]
    capture = kw.pop("capture_output", True)
    return subprocess.run(
        [sys.executable, "-m", "mixchat", *args],
        input=stdin,
        capture_output=capture,
        cwd=REPO,
        env=env(),
        timeout=180,
        **kw,
    )


def start(*args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mixchat", *args],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env(),
    )


def clean(err: bytes | str) -> str:
    """stderr must be free of tracebacks and aborts; returned decoded for further checks."""
    text = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
    assert not any(mark in text for mark in TRACEBACK_MARKS), text
    return text


def one_line(err: bytes | str, *expect: str) -> str:
    text = clean(err)
    assert text.count("\n") == 1 and all(e in text for e in expect), text
    return text


class Collector:
    """Reads a stream in a thread, so a test can wait for a marker without blocking on the pipe."""

    def __init__(self, stream: io.BufferedReader | None) -> None:
        self.data = b""
        self.lock = threading.Lock()
        assert stream is not None
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream: io.BufferedReader) -> None:
        while chunk := stream.read1(4096):
            with self.lock:
                self.data += chunk

    def wait_for(self, test: Callable[[bytes], bool], timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if test(self.data):
                    return True
            time.sleep(0.02)
        return False

    def text(self) -> str:
        self.thread.join(30)
        return self.data.decode("utf-8", "replace")


def saved(data: Path, name: str):  # type: ignore[no-untyped-def]
    return ConversationStore(data).read(name)


def long_reply_args(ckpt: Path, data: Path, name: str) -> list[str]:
    """A random tiny model with a high token limit: the reply runs until a signal stops it."""
    return [
        "chat",
        "--plain",
        "--model",
        str(ckpt),
        "--data-dir",
        str(data),
        "--conversation",
        name,
        "--max-tokens",
        "100000",
        "--temperature",
        "1",
    ]


# ---- locking ------------------------------------------------------------------------------------------------------
def test_second_process_is_refused_then_reads_forks_and_takes_over_a_stale_lock(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start(
        "chat",
        "--plain",
        "--model",
        str(ckpt),
        "--data-dir",
        str(data),
        "--conversation",
        "c",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
    )
    err = Collector(first.stderr)
    assert first.stdin is not None
    first.stdin.write(b"one\n")
    first.stdin.flush()
    try:
        assert err.wait_for(lambda d: b"saved conversation" in d), err.data
        second = mixchat(
            "chat",
            "--plain",
            "--model",
            str(ckpt),
            "--data-dir",
            str(data),
            "--resume",
            "c",
            "--max-tokens",
            "3",
            stdin=b"two\n",
        )
        assert second.returncode == 2
        one_line(second.stderr, "is open in another mixchat", f"pid {first.pid}", "--fork")
        assert [m.content for m in saved(data, "c").messages if m.role == "user"] == ["one"]
        # Reading needs no lock; a fork continues a copy while the original stays open.
        show = mixchat("conversations", "show", "c", "--data-dir", str(data))
        assert show.returncode == 0 and b"you> one" in show.stdout, show.stderr
        fork = mixchat(
            "chat",
            "--plain",
            "--model",
            str(ckpt),
            "--data-dir",
            str(data),
            "--resume",
            "c",
            "--fork",
            "c2",
            "--max-tokens",
            "3",
            stdin=b"two\n",
        )
        assert fork.returncode == 0, fork.stderr
        assert [m.content for m in saved(data, "c2").messages if m.role == "user"] == ["one", "two"]
        renamed = mixchat("conversations", "rename", "c", "c3", "--data-dir", str(data))
        assert renamed.returncode == 2 and b"open in another" in renamed.stderr
        # The holder dies without a chance to clean up: its lock is stale and the next process takes it over.
        first.stdin.write(b"three\n")
        first.stdin.flush()
        assert err.wait_for(lambda d: d.count(b"\n") >= 1 and len(saved(data, "c").messages) >= 4)
    finally:
        first.kill()
        first.wait(60)
    after = mixchat(
        "chat",
        "--plain",
        "--model",
        str(ckpt),
        "--data-dir",
        str(data),
        "--resume",
        "c",
        "--max-tokens",
        "3",
        stdin=b"four\n",
    )
    assert after.returncode == 0, after.stderr
    assert [m.content for m in saved(data, "c").messages if m.role == "user"] == ["one", "three", "four"]


# ---- output -------------------------------------------------------------------------------------------------------
def test_broken_pipe_ends_quietly_after_the_turn_is_saved(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = start(*long_reply_args(ckpt, data, "pipe"))
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"hello\nsecond turn\n")
    proc.stdin.close()
    head = proc.stdout.read(3)  # `| head -c 3`
    proc.stdout.close()
    proc.wait(180)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert len(head) == 3
    assert proc.returncode == 141, err  # 128 + SIGPIPE, silently, as other Unix tools end
    assert "error" not in clean(err), err
    t = saved(data, "pipe")
    assert [m.content for m in t.messages if m.role == "user"] == ["hello"]  # saved; no turn after the pipe broke
    assert t.messages[1].finish_reason == "cancelled" and t.messages[1].content.encode("utf-8").startswith(head)


def test_full_stdout_is_one_line_after_the_turn_is_saved(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with open("/dev/full", "wb") as full:
        proc = mixchat(
            *long_reply_args(ckpt, data, "full")[:-4],
            "--max-tokens",
            "5",
            stdin=b"hello\n",
            stdout=full,
            stderr=subprocess.PIPE,
            capture_output=False,
        )
    err = clean(proc.stderr)
    assert proc.returncode == 1
    assert "cannot write to stdout (No space left on device); the conversation was saved" in err, err
    assert [m.content for m in saved(data, "full").messages if m.role == "user"] == ["hello"]


def test_closed_stdout_is_one_line_after_the_turn_is_saved(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "mixchat",
        "chat",
        "--plain",
        "--model",
        str(ckpt),
        "--data-dir",
        str(data),
        "--conversation",
        "closed",
        "--max-tokens",
        "5",
    ]
    proc = subprocess.run(
        ["sh", "-c", '"$@" >&-', "sh", *cmd], input=b"hello\n", stderr=subprocess.PIPE, cwd=REPO, env=env(), timeout=180
    )
    err = clean(proc.stderr)
    assert proc.returncode == 1 and "cannot write to stdout (stdout is closed)" in err, err
    assert [m.content for m in saved(data, "closed").messages if m.role == "user"] == ["hello"]


# ---- storage ------------------------------------------------------------------------------------------------------
def _enospc(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


def test_full_disk_save_is_one_line_non_zero_and_leaves_no_folder(
    ckpt: Path, tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import mixchat.session.cachefile as cachefile

    data = tmp_path / "data"
    monkeypatch.setattr(cachefile, "save_file", _enospc)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    rc = main(
        [
            "chat",
            "--plain",
            "--model",
            str(ckpt),
            "--data-dir",
            str(data),
            "--conversation",
            "disk",
            "--max-tokens",
            "3",
        ]
    )
    err = clean(capsys.readouterr().err)
    assert rc == 1, err
    assert "could not save conversation 'disk'" in err and "No space left on device" in err
    assert err.count("mixchat: error:") == 1  # one line for the one failure
    root = data / "conversations"
    assert not root.exists() or [p.name for p in root.iterdir() if not p.name.startswith(".")] == []


def test_full_disk_rename_is_undone(ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import mixchat.session.store as store_module

    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=3))
    drain(conv.send("hi"))
    store = ConversationStore(tmp_path)
    folder = store.save(conv, "before")
    before = (folder / "transcript.json").read_bytes()

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module, "atomic_write_bytes", full)
    rc = main(["conversations", "rename", "before", "after", "--data-dir", str(tmp_path)])
    one_line(capsys.readouterr().err, "could not rename 'before' to 'after'", "No space left on device")
    assert rc == 2
    assert folder.is_dir() and (folder / "transcript.json").read_bytes() == before  # all or nothing
    assert store.find("after") is None and store.read("before").name == "before"


def test_read_only_folder_is_one_line(ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=3))
    drain(conv.send("hi"))
    store = ConversationStore(tmp_path)
    store.save(conv, "ro")
    d = ["--data-dir", str(tmp_path)]

    def erofs(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def eacces(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "rename", erofs)
    for argv in (["conversations", "rename", "ro", "rw", *d], ["conversations", "delete", "ro", *d]):
        assert main(argv) == 2
        one_line(capsys.readouterr().err, "Read-only file system")
    monkeypatch.undo()
    assert store.read("ro").messages[0].content == "hi"
    monkeypatch.setattr(Path, "iterdir", eacces)
    assert main(["conversations", "list", *d]) == 2
    one_line(capsys.readouterr().err, "Permission denied")
    monkeypatch.undo()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for argv in (
        ["conversations", "list", "--data-dir", str(a_file)],
        ["chat", "--plain", "--model", str(ckpt), "--data-dir", str(a_file)],
    ):
        monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
        assert main(argv) == 2
        one_line(capsys.readouterr().err, "is a file, not a folder")


# ---- numbers ------------------------------------------------------------------------------------------------------
def test_huge_seed_on_the_command_line_and_in_a_transcript(ckpt: Path, tmp_path: Path) -> None:
    huge = str(2**64)
    for argv in (
        ["generate", "--model", str(ckpt), "--prompt", "hi", "--seed", huge],
        ["chat", "--plain", "--model", str(ckpt), "--data-dir", str(tmp_path), "--seed", huge],
    ):
        proc = mixchat(*argv, stdin=b"hi\n")
        assert proc.returncode == 2
        one_line(proc.stderr, huge, "2^63")
    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.5, max_tokens=3, seed=7))
    drain(conv.send("hi"))
    folder = ConversationStore(tmp_path).save(conv, "seeded")
    path = folder / "transcript.json"
    d = json.loads(path.read_text())
    d["settings"]["seed"] = 2**70
    path.write_text(json.dumps(d))
    proc = mixchat(
        "chat", "--plain", "--model", str(ckpt), "--data-dir", str(tmp_path), "--resume", "seeded", stdin=b"again\n"
    )
    assert proc.returncode == 2
    one_line(proc.stderr, str(2**70), str(path), "repair")
    fixed = mixchat("conversations", "repair", "seeded", "--data-dir", str(tmp_path))
    assert fixed.returncode == 0 and b"reset the setting seed" in fixed.stderr, fixed.stderr
    again = mixchat(
        "chat",
        "--plain",
        "--model",
        str(ckpt),
        "--data-dir",
        str(tmp_path),
        "--resume",
        "seeded",
        "--max-tokens",
        "3",
        stdin=b"again\n",
    )
    assert again.returncode == 0, again.stderr
    assert [m.content for m in saved(tmp_path, "seeded").messages if m.role == "user"] == ["hi", "again"]
    assert any(p.name.startswith("transcript.damaged-") for p in folder.iterdir())  # the original is kept


def _edited_checkpoint(
    ckpt: Path, folder: Path, params: dict | None = None, tensor: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Path:
    folder.mkdir()
    for f in ckpt.iterdir():
        if f.name != "consolidated.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    if params:
        p = json.loads((ckpt / "params.json").read_text())
        p.update(params)
        (folder / "params.json").write_text(json.dumps(p))
    weights = load_file(ckpt / "consolidated.safetensors")
    if tensor is not None:
        weights["layers.1.attention.wq.weight"] = tensor(weights["layers.1.attention.wq.weight"].clone())
    save_file(weights, folder / "consolidated.safetensors")
    return folder


def _nan_at_one(t: torch.Tensor) -> torch.Tensor:
    t.view(-1)[t.numel() // 2] = float("nan")
    return t


@pytest.mark.parametrize(
    ("case", "params", "tensor", "expect"),
    [
        ("vocab", {"vocab_size": 10**12}, None, ["1000000000000", "consolidated.safetensors", "params.json"]),
        ("nan-weights", None, _nan_at_one, ["NaN", "layers.1.attention.wq.weight", "consolidated.safetensors"]),
        ("int-weights", None, lambda t: t.to(torch.int32), ["I32", "floating-point", "consolidated.safetensors"]),
        ("nan-eps", {"norm_eps": float("nan")}, None, ["norm_eps", "nan", "params.json"]),
        ("dim", {"dim": 96}, None, ["shape", "dim 96", "params.json"]),
    ],
)
def test_checkpoint_numbers_are_checked(ckpt: Path, tmp_path: Path, case: str, params, tensor, expect) -> None:  # type: ignore[no-untyped-def]
    folder = _edited_checkpoint(ckpt, tmp_path / case, params, tensor)
    proc = mixchat("generate", "--model", str(folder), "--prompt", "hi", "--max-tokens", "3")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    one_line(proc.stderr, *expect)
    assert proc.stdout == b""


def test_full_context_on_a_full_attention_model_is_a_non_zero_exit(full_attention_ckpt: Path, tmp_path: Path) -> None:
    proc = mixchat(
        "chat",
        "--plain",
        "--model",
        str(full_attention_ckpt),
        "--max-context",
        "24",
        "--data-dir",
        str(tmp_path),
        "--conversation",
        "full",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        stdin=b"one\ntwo\nthree\nfour\nfive\n",
    )
    err = clean(proc.stderr)
    assert proc.returncode == 2 and "context" in err, err
    assert err.count("mixchat: error:") == 1  # the next turns are not tried once the context is full
    assert saved(tmp_path, "full").messages  # what fitted is kept


def test_experts_per_token_in_a_transcript_is_checked(ckpt: Path, tmp_path: Path) -> None:
    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=3))
    drain(conv.send("hi"))
    path = ConversationStore(tmp_path).save(conv, "k") / "transcript.json"
    d = json.loads(path.read_text())
    d["settings"]["experts_per_token"] = 999
    path.write_text(json.dumps(d))
    proc = mixchat(
        "chat", "--plain", "--model", str(ckpt), "--data-dir", str(tmp_path), "--resume", "k", stdin=b"again\n"
    )
    assert proc.returncode == 2
    one_line(proc.stderr, "experts_per_token 999", str(path))


# ---- input --------------------------------------------------------------------------------------------------------
def test_closed_and_binary_stdin(ckpt: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mixchat"]
    for argv, expect in (
        (["chat", "--plain", "--data-dir", str(tmp_path)], "stdin is closed"),
        (["generate", "--prompts-file", "-"], "stdin is closed"),
    ):
        proc = subprocess.run(
            ["sh", "-c", '"$@" <&-', "sh", *base, *argv, "--model", str(ckpt)],
            capture_output=True,
            cwd=REPO,
            env=env(),
            timeout=180,
        )
        assert proc.returncode == 2
        one_line(proc.stderr, expect)
    garbage = bytes(range(128, 256)) * 4 + b"\x00\xff\xfe\n"
    proc = mixchat("generate", "--model", str(ckpt), "--prompts-file", "-", stdin=garbage)
    assert proc.returncode == 2
    one_line(proc.stderr, "not UTF-8")
    proc = mixchat("generate", "--model", str(ckpt), "--prompts-file", "-", stdin=b"hi\x00there\n")
    assert proc.returncode == 2
    one_line(proc.stderr, "NUL")


# ---- signals ------------------------------------------------------------------------------------------------------
def _handlers_installed(pid: int) -> bool:
    """mixchat has taken over SIGTERM (Python alone never catches it): its own handlers are in place."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when handlers are in")
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_early_sigint_is_quiet(ckpt: Path, tmp_path: Path, delay: float) -> None:
    proc = start("chat", "--plain", "--model", str(ckpt), "--data-dir", str(tmp_path))
    deadline = time.monotonic() + 30
    while not _handlers_installed(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)  # in the first half second: torch is still being imported, or the model loaded
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    one_line(err, "interrupted")


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_mid_reply_save_the_partial_reply(
    ckpt: Path, tmp_path: Path, signum: int, status: int
) -> None:
    data = tmp_path / "data"
    proc = start(*long_reply_args(ckpt, data, "sig"))
    out = Collector(proc.stdout)
    assert proc.stdin is not None
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    try:
        assert out.wait_for(lambda d: len(d) >= 20), "no reply streamed"
        proc.send_signal(signum)
        proc.wait(120)
    finally:
        proc.kill()
    assert proc.returncode == status
    assert proc.stderr is not None
    err = clean(proc.stderr.read())
    assert f"stopped by {signal.Signals(signum).name}" in err, err
    t = saved(data, "sig")
    reply = t.messages[1]
    assert reply.finish_reason == "cancelled" and len(reply.content) > 0
    assert out.text() == reply.content + "\n"  # what was shown is exactly what was saved


def test_first_ctrl_c_stops_the_reply_second_quits(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = start(*long_reply_args(ckpt, data, "int"))
    out, err = Collector(proc.stdout), Collector(proc.stderr)
    assert proc.stdin is not None
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    try:
        assert out.wait_for(lambda d: len(d) >= 20), "no reply streamed"
        proc.send_signal(signal.SIGINT)
        assert err.wait_for(lambda d: b"[cancelled]" in d), err.data
        assert proc.poll() is None  # the session goes on
        assert saved(data, "int").messages[1].finish_reason == "cancelled"
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in clean(err.text())


# ---- transcripts --------------------------------------------------------------------------------------------------
def _edit(ids: list[int], messages: list[dict]) -> tuple[list[int], list[dict]]:
    ids = list(ids)
    ids[len(ids) // 2] = (ids[len(ids) // 2] + 1) % 32000
    return ids, messages


@pytest.mark.parametrize(
    ("case", "edit"),
    [
        ("edited ids", _edit),
        ("ids cut short", lambda ids, ms: (ids[: len(ids) - 3], ms)),
        (
            "edited text",
            lambda ids, ms: (
                ids,
                [{**m, "content": m["content"] + " edited"} if i == 0 else m for i, m in enumerate(ms)],
            ),
        ),
        (
            "changed role",
            lambda ids, ms: (ids, [{**m, "role": "assistant"} if i == 2 else m for i, m in enumerate(ms)]),
        ),
    ],
)
def test_transcript_ids_are_checked_against_the_messages(ckpt: Path, tmp_path: Path, case: str, edit) -> None:  # type: ignore[no-untyped-def]
    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.8, max_tokens=6, seed=1))
    drain(conv.send("first question"))
    drain(conv.send("second question"))
    store = ConversationStore(tmp_path)
    path = store.save(conv, "t") / "transcript.json"
    d = json.loads(path.read_text())
    d["ids"], d["messages"] = edit(d["ids"], d["messages"])
    path.write_text(json.dumps(d))
    loaded = store.load_for(rt, "t")
    assert loaded.problem is not None and "\n" not in loaded.problem, case
    assert "rebuilt from its messages" in loaded.problem
    c = loaded.conversation
    # What the model continues is what the user sees: the ids are those of the messages now.
    assert c.ids == encode_transcript(rt.tokenizer, c.settings.system, c.messages)
    assert c.cache.seen[0] == 0  # the cache is rebuilt from those ids, not restored


def test_untouched_transcripts_pass_the_check(ckpt: Path, tmp_path: Path) -> None:
    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.8, max_tokens=4, seed=2))
    for text in ("a", "b", "c"):
        drain(conv.send(text))  # replies stopped at the token limit: ids without EOS between turns
    store = ConversationStore(tmp_path)
    store.save(conv, "ok")
    loaded = store.load_for(rt, "ok")
    assert loaded.problem is None and loaded.conversation.ids == conv.ids


# ---- names --------------------------------------------------------------------------------------------------------
def test_alias_names_are_refused(ckpt: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=3))
    drain(conv.send("hi"))
    ConversationStore(tmp_path).save(conv, "rb2")
    d = ["--data-dir", str(tmp_path)]
    for argv in (
        ["conversations", "delete", "rb/../rb2", *d],
        ["conversations", "show", "rb2/.", *d],
        ["conversations", "export", "./rb2", *d],
        ["conversations", "rename", "rb2", "..", *d],
        ["conversations", "rename", "rb/../rb2", "x", *d],
    ):
        assert main(argv) == 2, argv
        one_line(capsys.readouterr().err, "cannot be '.' or '..' or contain '/'")
    assert ConversationStore(tmp_path).read("rb2").messages[0].content == "hi"  # still there, untouched
    assert main(["conversations", "list", "--data-dir", ""]) == 2
    one_line(capsys.readouterr().err, '--data-dir ""')
    with pytest.raises(Exception, match="names no folder"):
        data_dir("")


# ---- the app ------------------------------------------------------------------------------------------------------
def test_app_shows_a_failed_save_until_a_save_succeeds(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from tui_support import chat_screen, idle, make_app

    import mixchat.session.cachefile as cachefile

    real_save = cachefile.save_file

    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            chat = await chat_screen(pilot)
            monkeypatch.setattr(cachefile, "save_file", _enospc)
            await chat.send("hello")
            await idle(pilot, chat)
            notes = [str(n.render()) for n in chat.transcript.query(".note")]
            assert any("not saved" in n and "No space left on device" in n for n in notes), notes
            assert "NOT SAVED" in chat.status.text()
            assert len(chat.transcript.replies()) == 1  # the turn stays on screen, and in the conversation
            await pilot.pause(1.0)
            assert "NOT SAVED" in chat.status.text()  # persistent, not a toast that fades
            monkeypatch.setattr(cachefile, "save_file", real_save)
            await chat.send("again")
            await idle(pilot, chat)
            assert "NOT SAVED" not in chat.status.text()
            saved_turns = ConversationStore(tmp_path / "data").read(chat.conversation.name).messages
            assert [m.content for m in saved_turns if m.role == "user"] == ["hello", "again"]

    asyncio.run(scenario())


def test_app_refuses_a_conversation_open_in_another_process(ckpt: Path, tmp_path: Path) -> None:
    import asyncio

    from tui_support import make_app, until

    from mixchat.session.lock import lock_path

    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=3))
    drain(conv.send("hi"))
    store = ConversationStore(tmp_path / "data")
    store.save(conv, "busy")
    lock_path(store.root, conv.id).parent.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
            str(lock_path(store.root, conv.id)),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"

        async def scenario() -> None:
            app = make_app(tmp_path, resume="busy")
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: app.load_error is not None, what="the load to fail")
            assert "is open in another mixchat" in app.load_error and "\n" not in app.load_error

        asyncio.run(scenario())
    finally:
        holder.kill()
        holder.wait()
