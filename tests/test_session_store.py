"""Saving and resuming conversations: formats, integrity checks, crash safety, safe names, no pickle."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from session_support import REPO, ForwardRecorder, W, drain, make_checkpoint, reference_logits, runtime

from mixchat.cli.main import main
from mixchat.session import ChatSettings, Conversation, ConversationError, ConversationStore, TranscriptError
from mixchat.session.files import MAX_NAME, clean_name, contained, slug
from mixchat.session.transcript import FORMAT_VERSION

TURNS = ["Hello there", "Tell me about rivers", "And mountains?", "Which is older?", "Why?", "Thanks!"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def rt(ckpt: Path):  # type: ignore[no-untyped-def]
    return runtime(ckpt)


def settings() -> ChatSettings:
    return ChatSettings(temperature=0.0, max_tokens=6, chunk_size=8)


def chat(rt, turns: list[str], conv: Conversation | None = None) -> Conversation:  # type: ignore[no-untyped-def]
    conv = conv or Conversation.from_runtime(rt, settings())
    for t in turns:
        drain(conv.send(t))
    return conv


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---- resume ---------------------------------------------------------------------------------------------------
def test_resume_continues_without_prefilling_old_turns(ckpt: Path, tmp_path: Path) -> None:
    uninterrupted = chat(runtime(ckpt), TURNS)
    expected = [m.content for m in uninterrupted.messages[7::2]]

    first = runtime(ckpt)
    store = ConversationStore(tmp_path)
    store.save(chat(first, TURNS[:3]), "trip")
    del first

    fresh = runtime(ckpt)  # a new model object, as in a new process (test_cli_chat does a real one)
    loaded = ConversationStore(tmp_path).load_for(fresh, "trip")
    assert loaded.problem is None
    conv = loaded.conversation
    restored = conv.cache.seen[0]
    assert restored == len(conv.ids) - 1 and conv.pending == conv.ids[-1:]  # the whole cache came back
    rec = ForwardRecorder(fresh.engine, only=conv.cache)
    try:
        replies = []
        for t in TURNS[3:]:
            drain(conv.send(t))
            replies.append(conv.messages[-1].content)
    finally:
        rec.remove()
    assert replies == expected
    assert conv.ids == uninterrupted.ids
    # Fed through the model after resuming: the new turns and replies only, never the old turns.
    assert rec.tokens == conv.cache.seen[0] - restored == conv.prefilled_tokens + conv.decoded_tokens
    assert rec.tokens == len(conv.ids) - 1 - restored


def test_saved_files_are_json_and_safetensors(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conv = chat(
        rt, TURNS[:4], Conversation.from_runtime(rt, ChatSettings(system="Be kind.", temperature=0, max_tokens=6))
    )
    folder = ConversationStore(tmp_path).save(conv, "files")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["cache-1.safetensors", "transcript.json", "undo-1.safetensors"]
    d = json.loads((folder / "transcript.json").read_text(encoding="utf-8"))
    assert d["format_version"] == FORMAT_VERSION and d["name"] == "files"
    assert d["ids"] == conv.ids and d["created"] and d["updated"]
    assert d["messages"][0] == {"role": "system", "content": "Be kind."}
    assert [m["role"] for m in d["messages"][1:]] == ["user", "assistant"] * 4
    assert d["settings"]["max_tokens"] == 6 and "system" not in d["settings"]
    fp = d["model"]["fingerprint"]
    assert fp["architecture"]["sliding_window"] == W and len(fp["tokenizer"]) == 64 and len(fp["weights"]) == 64
    with safe_open(str(folder / "cache-1.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"k", "v"}
        meta = f.metadata()
        k = f.get_tensor("k")
    a = rt.model.args
    assert tuple(k.shape) == (a.n_layers, W, a.n_kv_heads, a.head_dim)  # only the live slots
    assert int(meta["seen"]) == conv.cache.seen[0] == d["cache"]["seen"]
    assert meta["sha256"] == d["cache"]["sha256"]
    # A second save replaces the cache file (new number) and removes the old one.
    drain(conv.send("more"))
    ConversationStore(tmp_path).save(conv)
    assert sorted(p.name for p in folder.iterdir()) == ["cache-2.safetensors", "transcript.json", "undo-2.safetensors"]


# ---- corruption -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(rt, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A saved 3-turn conversation (data dir, its conversation) to copy and damage."""
    data = tmp_path_factory.mktemp("saved")
    conv = chat(rt, TURNS[:3])
    ConversationStore(data).save(conv, "demo")
    return data, conv


def damage(kind: str, folder: Path, other_model_dir: Path) -> str:
    """Damage the copy in `folder`; returns a fragment the one-line report must contain."""
    cache = next(folder.glob("cache-*.safetensors"))
    data = cache.read_bytes()
    if kind == "truncated":
        cache.write_bytes(data[: len(data) // 2])
        return "truncated or damaged"
    if kind == "flipped":
        b = bytearray(data)
        for i in range(len(b) - 200, len(b) - 100):
            b[i] ^= 0xFF
        cache.write_bytes(bytes(b))
        return "checksum"
    if kind == "missing":
        cache.unlink()
        return "missing"
    if kind == "other_model_cache":
        other = runtime(other_model_dir)
        oc = chat(other, TURNS[:3])
        ConversationStore(folder.parent.parent / "elsewhere").save(oc, "x")
        src = next((folder.parent.parent / "elsewhere" / "conversations" / "x").glob("cache-*.safetensors"))
        shutil.copy(src, cache)
        return "different model"
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("other"), seed=1)


@pytest.mark.parametrize("kind", ["truncated", "flipped", "missing", "other_model_cache"])
def test_damaged_cache_is_rebuilt_from_the_transcript(rt, saved, other_ckpt, tmp_path, kind) -> None:  # type: ignore[no-untyped-def]
    data, original = saved
    shutil.copytree(data, tmp_path / "data")
    store = ConversationStore(tmp_path / "data")
    expect = damage(kind, store.folder("demo"), other_ckpt)
    loaded = store.load_for(rt, "demo")
    assert loaded.problem is not None and "\n" not in loaded.problem
    assert expect in loaded.problem and "rebuilding" in loaded.problem
    conv = loaded.conversation
    assert conv.ids == original.ids and conv.messages == original.messages  # nothing lost
    assert conv.pending == conv.ids  # the next turn pre-fills the transcript's ids
    torch.testing.assert_close(conv.next_token_logits(), reference_logits(rt.model, conv.ids)[-1], atol=1e-4, rtol=0)
    drain(conv.send("still there?"))
    torch.testing.assert_close(conv.next_token_logits(), reference_logits(rt.model, conv.ids)[-1], atol=1e-4, rtol=0)
    store.save(conv)
    assert store.load_for(rt, "demo").problem is None  # the rebuilt cache was saved


def test_other_model_resumes_by_rebuilding(saved, other_ckpt: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, original = saved
    shutil.copytree(data, tmp_path / "data")
    other = runtime(other_ckpt)
    loaded = ConversationStore(tmp_path / "data").load_for(other, "demo")
    assert loaded.problem is not None and "different model (different weights)" in loaded.problem
    assert loaded.conversation.ids == original.ids and loaded.conversation.pending == original.ids


@pytest.mark.parametrize("kind", ["newer_version", "unparsable"])
def test_unusable_transcript_is_reported_and_left_alone(rt, saved, ckpt, tmp_path, kind, capsys) -> None:  # type: ignore[no-untyped-def]
    data, _ = saved
    shutil.copytree(data, tmp_path / "data")
    store = ConversationStore(tmp_path / "data")
    folder = store.folder("demo")
    path = folder / "transcript.json"
    if kind == "newer_version":
        path.write_text(path.read_text().replace(f'"format_version": {FORMAT_VERSION}', '"format_version": 99'))
        expect = "newer mixchat"
    else:
        path.write_text(path.read_text()[:-40])
        expect = "not valid JSON"
    before = folder_digest(folder)
    with pytest.raises(TranscriptError, match=expect) as err:
        store.load_for(rt, "demo")
    assert "\n" not in str(err.value) and "untouched" in str(err.value)
    # From the command line: one line, exit status 2, no traceback; a later save cannot overwrite it.
    rc = main(["chat", "--plain", "--model", str(ckpt), "--data-dir", str(tmp_path / "data"), "--resume", "demo"])
    err_text = capsys.readouterr().err
    assert rc == 2 and err_text.count("\n") == 1 and expect in err_text and "Traceback" not in err_text
    with pytest.raises(ConversationError, match="cannot be read"):
        store.save(Conversation.from_runtime(rt, settings()), "demo")
    info = [i for i in store.list() if i.folder == folder]
    assert info and info[0].error is not None
    assert folder_digest(folder) == before


def test_damaged_cache_from_the_command_line(saved, ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import io

    data, original = saved
    shutil.copytree(data, tmp_path / "data")
    store = ConversationStore(tmp_path / "data")
    next(store.folder("demo").glob("cache-*")).write_bytes(b"garbage")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    rc = main(["chat", "--plain", "--model", str(ckpt), "--data-dir", str(tmp_path / "data"), "--resume"])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("\n") == 1 and "rebuilding the cache" in err and "Traceback" not in err
    assert store.read("demo").ids == original.ids


# ---- crash safety -------------------------------------------------------------------------------------------------
def test_sigkill_during_save_leaves_a_complete_save(tmp_path: Path) -> None:
    helper = REPO / "tests" / "helpers" / "save_loop.py"
    sys.path.insert(0, str(helper.parent))
    try:
        import save_loop
    finally:
        sys.path.pop(0)
    rng = random.Random(1234)
    data = tmp_path / "data"
    for _ in range(2):
        # PYTHONPATH: the helper must import this checkout's mixchat, not whichever one is installed.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, str(helper), str(data)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                                env=env)  # fmt: skip
        done: list[int] = []
        reader = threading.Thread(target=lambda p=proc, d=done: [d.append(int(x)) for x in p.stdout], daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while len(done) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert len(done) >= 2, "the helper did not start saving"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(5)
        loaded = save_loop.load(data)
        assert loaded.problem is None  # cache file and transcript belong together
        n = save_loop.save_number(loaded.conversation)
        assert n in (done[-1], done[-1] + 1)  # the last reported save, or one completed just before the kill
        save_loop.check(loaded.conversation, n)
    # A later save clears what the killed ones left behind.
    store = ConversationStore(data)
    store.save(loaded.conversation)
    names = os.listdir(store.folder(save_loop.NAME))
    assert sorted(names)[-1] == "transcript.json" and len(names) == 2, names


# ---- names ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../etc/passwd", "/absolute/path", "a/b\\c", "..", ".", "rb/../rb2", "rb2/."])
def test_names_that_are_not_one_folder_name_are_refused(rt, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    store = ConversationStore(tmp_path / "data")
    conv = chat(rt, ["hi"], Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=2)))
    with pytest.raises(ConversationError, match="or contain '/'"):
        store.save(conv, name)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("transcript.json"))


@pytest.mark.parametrize(
    "name",
    [
        "~",
        "nul",
        "CON",
        "tab\there",
        "bell\x07\x1b[31m",
        "x" * MAX_NAME,
        "ünïcødé 名前",
        "a\x00b",
        "-rf",
        ".hidden",
        "...",
        "a..b",
    ],
)
def test_names_cannot_escape_the_data_dir(rt, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    store = ConversationStore(tmp_path / "data")
    conv = chat(rt, ["hi"], Conversation.from_runtime(rt, ChatSettings(temperature=0, max_tokens=2)))
    folder = store.save(conv, name)
    assert folder.parent.resolve() == store.root.resolve()
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", folder.name) and len(folder.name) <= 75
    assert conv.name == clean_name(name) and not any(ord(c) < 32 for c in conv.name)
    assert store.read(name).ids == conv.ids  # found again by the same name
    assert all(p.resolve().is_relative_to((tmp_path / "data").resolve()) for p in tmp_path.rglob("*"))


def test_name_rules(tmp_path: Path) -> None:
    with pytest.raises(ConversationError, match="at most"):
        clean_name("y" * 5000)
    with pytest.raises(ConversationError):
        clean_name("\x01\x02 \n")
    assert slug("trip") == "trip" and slug("Trip") != slug("trip")  # case-insensitive file systems
    assert slug("a/b") != slug("a_b") and slug("a b") != slug("a-b")
    assert len(slug("z" * MAX_NAME)) <= 75
    with pytest.raises(ConversationError):
        contained(tmp_path, "..")
    for bad in ("../x", "a/../../b"):
        with pytest.raises(ConversationError):
            contained(tmp_path, bad)


# ---- managing ---------------------------------------------------------------------------------------------------
def test_list_rename_export_delete(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ConversationStore(tmp_path)
    a = chat(rt, ["first"], Conversation.from_runtime(rt, settings()))
    store.save(a, "alpha")
    b = chat(rt, ["second", "third"], Conversation.from_runtime(rt, settings()))
    store.save(b, "beta")
    assert [i.name for i in store.list()][:2] in (["beta", "alpha"], ["alpha", "beta"])
    assert {i.name: i.turns for i in store.list()} == {"alpha": 1, "beta": 2}
    with pytest.raises(ConversationError, match="already exists"):
        store.save(a, "beta")
    with pytest.raises(ConversationError, match="already exists"):
        store.rename("alpha", "beta")
    assert store.rename("alpha", "gamma · delta") == "gamma · delta"
    assert not store.exists("alpha") and store.exists("gamma · delta")
    loaded = store.load_for(rt, "gamma · delta")
    assert loaded.problem is None and loaded.conversation.name == "gamma · delta"
    md = store.export("beta", "md")
    assert md.startswith("# beta\n") and "## User\n\nsecond" in md and b.messages[-1].content in md
    exported = json.loads(store.export("beta", "json"))
    assert exported["ids"] == b.ids and [m["content"] for m in exported["messages"]][:1] == ["second"]
    store.delete("beta")
    assert not store.exists("beta") and [i.name for i in store.list()] == ["gamma · delta"]
    with pytest.raises(ConversationError, match="no conversation named"):
        store.delete("beta")


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXCHAT_DATA_DIR", str(tmp_path / "env"))
    assert ConversationStore().root == tmp_path / "env" / "conversations"
    assert ConversationStore(tmp_path / "flag").root == tmp_path / "flag" / "conversations"


# ---- no pickle, no textual -----------------------------------------------------------------------------------------
def test_no_pickle_and_no_textual_in_the_session_layer() -> None:
    files = [
        *(REPO / "mixchat" / "session").glob("*.py"),
        REPO / "mixchat" / "cli" / "chat.py",
        REPO / "mixchat" / "cli" / "conversations.py",
    ]
    assert len(files) >= 9
    unsafe_modules = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
    for path in files:
        tree = ast.parse(path.read_text())  # code only: docstrings may say "no pickle"
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            roots = {m.split(".")[0] for m in modules}
            assert not roots & unsafe_modules, f"{path.name} imports {roots & unsafe_modules}"
            if path.parent.name == "session":
                assert "textual" not in roots, f"{path.name} imports textual"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("load", "save") or not (
                    isinstance(node.value, ast.Name) and node.value.id in ("torch", "np", "numpy")
                ), f"{path.name} calls {node.value.id}.{node.attr}"  # type: ignore[attr-defined]
            if isinstance(node, ast.keyword):
                assert node.arg != "allow_pickle", f"{path.name} allows pickle"


def test_cache_in_another_dtype_is_rebuilt(saved, ckpt: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mixchat.runtime import load_runtime

    data, original = saved
    shutil.copytree(data, tmp_path / "data")
    bf16 = load_runtime(ckpt, device="cpu", dtype="bfloat16")
    loaded = ConversationStore(tmp_path / "data").load_for(bf16, "demo")
    assert loaded.problem is not None and "float32 but the model runs in bfloat16" in loaded.problem
    assert loaded.conversation.ids == original.ids and loaded.conversation.pending == original.ids
