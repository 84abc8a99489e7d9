"""`/retry`, `/undo`, `/edit`, `/fork`, `/copy` in `mixchat chat --plain`, and `mixchat conversations search`.

The pipe test runs real processes on the built-in model, as a user would type it; the replies it prints are
checked against the same turns run in-process on the session layer, and the saved forks by resuming each.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from session_support import REPO, drain, make_checkpoint, runtime

from mixchat.cli.chat import PlainRepl
from mixchat.cli.main import main
from mixchat.cli.output import Output
from mixchat.session import ChatSettings, Conversation, ConversationStore


def mixchat(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "mixchat", *args], input=stdin, capture_output=True, cwd=REPO,
                          env=env, timeout=300, text=True, encoding="utf-8")  # fmt: skip


def replies_to(rt, turns: list[str], ids: list[int] | None = None, messages=()) -> list[str]:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0))
    if ids is not None:
        conv = Conversation(rt.engine, rt.tokenizer, conv.fingerprint, ChatSettings(temperature=0.0),
                            messages=messages, ids=ids)  # fmt: skip
    out = []
    for t in turns:
        drain(conv.send(t))
        out.append(conv.messages[-1].content)
    return out


def test_retry_undo_fork_from_a_pipe_and_the_forks_resume_independently(tmp_path: Path) -> None:
    from mixchat.runtime import load_runtime

    data = str(tmp_path / "data")
    proc = mixchat("chat", "--plain", "--temperature", "0", "--data-dir", data,
                   stdin="hi\n/retry\n/undo\ntell me a story\n/fork story2\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rt = load_runtime(None, device="cpu", dtype="float32")
    hi, story = replies_to(rt, ["hi"])[0], replies_to(rt, ["tell me a story"])[0]
    assert proc.stdout == f"{hi}\n{hi}\n{story}\n"  # the retry at temperature 0 printed the same reply
    assert "undid the last turn: 'hi'" in proc.stderr and "forked" in proc.stderr

    store = ConversationStore(data)
    names = {i.name for i in store.list()}
    assert "story2" in names and len(names) == 2
    (original,) = names - {"story2"}
    a, b = store.read(original), store.read("story2")
    assert [m.content for m in a.messages] == [m.content for m in b.messages] == ["tell me a story", story]
    assert a.ids == b.ids and a.id != b.id
    fa, fb = store.folder(original), store.folder("story2")
    assert fa != fb and not any(p.is_symlink() for p in [*fa.iterdir(), *fb.iterdir()])

    # each fork goes on by itself, from its own saved cache
    proc = mixchat("chat", "--plain", "--temperature", "0", "--data-dir", data, "--resume", "story2",
                   stdin="and then?\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = replies_to(rt, ["and then?"], ids=b.ids, messages=b.messages)[0]
    assert proc.stdout == expected + "\n"
    assert store.read(original).turns == 1 and store.read("story2").turns == 2
    proc = mixchat("chat", "--plain", "--temperature", "0", "--data-dir", data, "--resume", original,
                   stdin="who is in it?\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    a2, b2 = store.read(original), store.read("story2")
    assert [m.content for m in a2.messages if m.role == "user"] == ["tell me a story", "who is in it?"]
    assert [m.content for m in b2.messages if m.role == "user"] == ["tell me a story", "and then?"]
    assert b2.ids == store.read("story2").ids and a2.ids[: len(a.ids)] == a.ids


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return runtime(make_checkpoint(tmp_path_factory.mktemp("ckpt")))


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def repl_run(rt, tmp_path: Path, script: str, out: io.StringIO | None = None) -> tuple[PlainRepl, str, str]:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=6))
    out = out if out is not None else io.StringIO()
    err = io.StringIO()
    repl = PlainRepl(rt, ConversationStore(tmp_path), conv, stdin=io.StringIO(script), stdout=out, stderr=err)
    assert repl.loop() == 0
    return repl, out.getvalue(), err.getvalue()


def test_edit_reads_the_next_line_and_errors_are_one_line(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repl, out, err = repl_run(rt, tmp_path, "/undo\n/retry\n/edit\nfirst\n/edit\nsecond try\n/edit\n\n/fork\n")
    assert "nothing to undo" in err and "nothing to edit" in err and "edit cancelled" in err
    assert "usage: /fork NAME" in err and "Traceback" not in err
    conv = repl.conv
    assert [m.content for m in conv.messages if m.role == "user"] == ["second try"]
    assert out.count("\n") == 2  # the reply to "first", then the reply to its edit
    assert out.splitlines()[1] == replies_to_tiny(rt, "second try")
    saved = ConversationStore(tmp_path).read(conv.name)
    assert [m.content for m in saved.messages if m.role == "user"] == ["second try"]


def replies_to_tiny(rt, text: str) -> str:  # type: ignore[no-untyped-def]
    conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=6))
    drain(conv.send(text))
    return conv.messages[-1].content


def test_copy_writes_osc52_to_a_terminal_and_prints_otherwise(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repl, out, err = repl_run(rt, tmp_path, "/copy\nhello\n/copy\n/copy 1\n", out=Tty())
    reply = repl.conv.messages[-1].content
    assert "nothing to copy" in err and "has no code block" in err
    assert f"\x1b]52;c;{base64.b64encode(reply.encode()).decode()}\a" in out
    assert "copied the last reply" in err

    # a reply with code blocks: /copy N takes one block
    conv = repl.conv
    conv.messages[-1].content = "Here:\n```python\nprint('hi')\n```\nand\n~~~\nls -l\n~~~\n"
    repl.inp = io.StringIO("/copy 2\n/copy 3\n")
    plain = io.StringIO()
    repl.out = Output(plain)  # not a terminal: the text is printed to stderr instead
    repl.err = err2 = io.StringIO()
    repl.loop()
    assert "no terminal to copy to" in err2.getvalue() and "\nls -l\n" in err2.getvalue()
    assert "use /copy 1..2" in err2.getvalue() and plain.getvalue() == ""


def test_conversations_search(rt, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    store = ConversationStore(tmp_path)
    for name, text in (("trip plans", "Where is Lisbon?"), ("recipes", "A soup, please")):
        conv = Conversation.from_runtime(rt, ChatSettings(temperature=0.0, max_tokens=3))
        drain(conv.send(text))
        store.save(conv, name)
    assert main(["conversations", "search", "LISBON", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out == "trip plans\n  you> Where is Lisbon?\n"
    assert main(["conversations", "search", "nowhere to be found", "--data-dir", str(tmp_path)]) == 1
    assert "mentions 'nowhere to be found'" in capsys.readouterr().err
    assert main(["conversations", "search", "recip", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "recipes\n  name> recipes\n"
