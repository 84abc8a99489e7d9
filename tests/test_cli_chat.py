"""`mixchat chat --plain` and `mixchat conversations`: pipes, resume in a new process, commands, errors."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from session_support import REPO, drain, make_checkpoint, runtime

from mixchat.cli.main import main
from mixchat.session import ChatSettings, Conversation, ConversationStore


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def mixchat(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run `python -m mixchat ARGS` as a real process; bytes, so model output is compared exactly."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "mixchat", *args], input=stdin, capture_output=True, cwd=REPO, env=env, timeout=120
    )


def run_main(argv: list[str], stdin: str, capsys: pytest.CaptureFixture[str], monkeypatch) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_pipe_prints_two_replies_and_saves(ckpt: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    proc = mixchat(
        "chat",
        "--plain",
        "--model",
        str(ckpt),
        "--data-dir",
        str(data),
        "--max-tokens",
        "24",
        stdin=b"Hello\nTell me more\n",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"\x1b[" not in proc.stdout + proc.stderr and b"> " not in proc.stderr  # no prompts, no colours
    store = ConversationStore(data)
    (info,) = store.list()
    t = store.read(info.name)
    replies = [m.content for m in t.messages if m.role == "assistant"]
    assert [m.content for m in t.messages if m.role == "user"] == ["Hello", "Tell me more"]
    assert proc.stdout.decode("utf-8") == replies[0] + "\n" + replies[1] + "\n"  # each streamed as generated
    assert info.name in proc.stderr.decode()  # where it was saved goes to stderr

    assert main(["conversations", "list", "--data-dir", str(data)]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^{re.escape(info.name)}\s+2\s+{len(t.ids)}\s", listing, re.M), listing
    assert main(["conversations", "export", info.name, "--format", "md", "--data-dir", str(data)]) == 0
    md = capsys.readouterr().out
    assert md.startswith(f"# {info.name}\n")
    assert "## User\n\nHello\n" in md and "## User\n\nTell me more\n" in md
    assert all(f"## Assistant\n\n{r}\n" in md for r in replies)


def test_resume_in_a_new_process_matches_an_uninterrupted_run(ckpt: Path, tmp_path: Path) -> None:
    turns = ["Hi, how are you?", "Tell me a fact", "Another one", "Why is that?", "Go on", "Thanks"]
    settings = ChatSettings(temperature=0.0, max_tokens=8)
    rt = runtime(ckpt)
    whole = Conversation.from_runtime(rt, settings)
    fed_after_3 = 0
    for i, t in enumerate(turns):
        drain(whole.send(t))
        if i >= 3:
            assert whole.last is not None
            fed_after_3 += whole.last.prompt_tokens
    expected = [m.content for m in whole.messages[7::2]]

    part = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=8))
    for t in turns[:3]:
        drain(part.send(t))
    ConversationStore(tmp_path).save(part, "resumable")

    stdin = ("\n".join(turns[3:]) + "\n/stats\n").encode()
    proc = mixchat(
        "chat", "--plain", "--model", str(ckpt), "--data-dir", str(tmp_path), "--resume", "resumable", stdin=stdin
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "rebuilding" not in err
    assert proc.stdout.decode("utf-8") == "".join(r + "\n" for r in expected)
    # The resumed process pre-filled only the three new turns, not the conversation so far.
    m = re.search(r"this session: pre-filled (\d+) tokens, decoded (\d+)", err)
    assert m is not None, err
    assert int(m[1]) == fed_after_3 and int(m[1]) < len(part.ids)
    saved = ConversationStore(tmp_path).read("resumable")
    assert saved.ids == whole.ids


def test_commands(ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data = str(tmp_path / "data")
    script = (
        "\n".join(
            [
                "/help",
                "/system",
                "/system Be brief.",
                "first",
                "/stats",
                "/system Be verbose.",
                "//slash",
                "/save named",
                "/new",
                "/bogus",
                "/quit",
                "never sent",
            ]
        )
        + "\n"
    )
    rc, out, err = run_main(
        [
            "chat",
            "--plain",
            "--model",
            str(ckpt),
            "--data-dir",
            data,
            "--temperature",
            "0",
            "--max-tokens",
            "4",
            "--conversation",
            "one",
        ],
        script,
        capsys,
        monkeypatch,
    )
    assert rc == 0
    assert out.count("\n") == 2  # two replies: "first" and "/slash"
    assert "/save [NAME]" in err and "no system prompt" in err and "system prompt set" in err
    assert re.search(r"^window: \d+/16 slots", err, re.M) and "cache has seen" in err
    assert re.search(r"^  L0 +(\d+:\d+ ){7}\d+:\d+$", err, re.M), err  # per-layer expert usage
    assert "started a new conversation" in err and "unknown command /bogus" in err
    store = ConversationStore(data)
    one, named = store.read("one"), store.read("named")
    assert one.settings.system == "Be brief." and [m.content for m in one.messages][:1] == ["first"]
    assert named.settings.system == "Be verbose." and named.messages[0].content == "/slash"
    names = {i.name for i in store.list()}  # "one", the auto-named second one, and its copy "named"
    assert len(names) == 3 and {"one", "named"} <= names
    assert not any(m.content == "never sent" for n in names for m in store.read(n).messages)


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["chat"], "--plain"),
        (["chat", "--plain", "--resume"], "no saved conversation"),
        (["chat", "--plain", "--resume", "nope"], "no conversation named 'nope'"),
        (["chat", "--plain", "--conversation", "x" * 5000], "at most 200"),
        (["chat", "--plain", "--experts-per-token", "9", "--model", "CKPT"], "between 1 and 8"),
        (["conversations", "show", "nope"], "no conversation named"),
        (["conversations", "export", "nope", "--format", "md"], "no conversation named"),
        (["chat", "--plain", "--temperature", "-1"], "expected a number >= 0"),
    ],
)
def test_errors_are_one_line(ckpt: Path, tmp_path: Path, capsys, monkeypatch, argv, expect) -> None:  # type: ignore[no-untyped-def]
    argv = [str(ckpt) if a == "CKPT" else a for a in argv] + ["--data-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and expect in err and "Traceback" not in err, err


def test_conversations_manage(ckpt: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rt = runtime(ckpt)
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=3, system="Sys."))
    drain(conv.send("hello"))
    ConversationStore(tmp_path).save(conv, "old name")
    d = ["--data-dir", str(tmp_path)]
    assert main(["conversations", "rename", "old name", "new name", *d]) == 0
    assert main(["conversations", "show", "new name", *d]) == 0
    shown = capsys.readouterr().out
    assert "name:      new name" in shown and "system:    Sys." in shown and "you> hello" in shown
    assert main(["conversations", "export", "new name", "--format", "json", *d]) == 0
    assert '"name": "new name"' in capsys.readouterr().out
    assert main(["conversations", *d]) == 0 and "new name" in capsys.readouterr().out  # list is the default
    assert main(["conversations", "delete", "new name", *d]) == 0
    capsys.readouterr()
    assert main(["conversations", "list", *d]) == 0 and "no conversations" in capsys.readouterr().err
