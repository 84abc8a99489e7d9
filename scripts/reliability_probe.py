"""Probe mixchat as a hostile but realistic user would (issue 13), and count what went wrong.

Every case runs `python -m mixchat` as a real process (storage faults are injected into one by a small
wrapper that makes the failing call raise the OSError the kernel would give), then classifies the result:

- traceback: "Traceback" on stderr;
- abort:     killed by SIGABRT (status 134), or "terminate called" / a pybind11 error on stderr;
- loss:      a turn the case expects on disk is not there (or a conversation that must stay is gone);
- silent:    a loss with exit status 0 and nothing said on stderr (the ones a script never notices);
- multi-line: an error (non-zero exit) that took more than one line of stderr.

usage: python scripts/reliability_probe.py [--jobs 2] [--only CATEGORY] [--markdown]
The table lists, per category: cases, tracebacks, aborts, losses, silent losses, multi-line errors.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's mixchat, not an installed one
PY = sys.executable
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8"}
ENV.pop("MIXCHAT_DATA_DIR", None)

# Runs mixchat's main() with one call made to fail: FAULT=module:attribute:errno (see `fault` below).
FAULT_WRAPPER = """
import errno, importlib, os, sys
mod, attr, code = os.environ["MIXCHAT_FAULT"].split(":")
target = importlib.import_module(mod) if mod != "Path" else __import__("pathlib").Path
def fail(*a, **k):
    if mod == "mixchat.session.cachefile":
        from safetensors import SafetensorError
        raise SafetensorError(f"Error while serializing: IoError(Os {{ code: {code}, kind: Other, message: \\"x\\" }})")
    raise OSError(int(code), os.strerror(int(code)))
setattr(target, attr, fail)
from mixchat.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Result:
    category: str
    case: str
    rc: int
    stderr: str
    lost: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr

    @property
    def abort(self) -> bool:
        return self.rc in (134, -6) or "terminate called" in self.stderr or "pybind11" in self.stderr

    @property
    def silent(self) -> bool:
        return self.lost and self.rc == 0 and not self.stderr.strip()

    @property
    def multi_line(self) -> bool:
        if self.rc in (0, 129, 130, 141, 143) or self.traceback:
            return False
        errors = [line for line in self.stderr.splitlines() if "error" in line]
        return len(errors) != 1


def run(
    args: list[str],
    stdin: bytes | None = b"",
    timeout: float = 240,
    fault: str | None = None,
    shell_suffix: str = "",
    stdout: int | None = subprocess.PIPE,
) -> tuple[int, bytes, str]:
    cmd = [PY, "-c", FAULT_WRAPPER, *args] if fault else [PY, "-m", "mixchat", *args]
    env = {**ENV, "MIXCHAT_FAULT": fault} if fault else ENV
    if shell_suffix:
        cmd = ["sh", "-c", '"$@" ' + shell_suffix, "sh", *cmd]
    p = subprocess.run(cmd, input=stdin, stdout=stdout, stderr=subprocess.PIPE, cwd=REPO, env=env, timeout=timeout)
    return p.returncode, p.stdout or b"", p.stderr.decode("utf-8", "replace")


def transcript(data: Path, name: str) -> dict | None:
    """The saved transcript of `name`, found by its stored name (None if there is none)."""
    root = data / "conversations"
    if not root.is_dir():
        return None
    for folder in root.iterdir():
        f = folder / "transcript.json"
        if f.is_file():
            try:
                d = json.loads(f.read_text())
            except ValueError:
                continue
            if d.get("name") == name:
                return d
    return None


def users(data: Path, name: str) -> list[str]:
    d = transcript(data, name)
    return [m["content"] for m in d["messages"] if m.get("role") == "user"] if d else []


class Probe:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.tiny = self._tiny_model(work / "tiny", window=16)
        self.full = self._tiny_model(work / "full", window=None)
        self.count = 0
        self.lock = threading.Lock()

    def data(self) -> Path:
        with self.lock:
            self.count += 1
            return self.work / f"data{self.count}"

    @staticmethod
    def _tiny_model(folder: Path, window: int | None) -> Path:
        """A random tiny Mixtral with a real Mistral tokenizer: replies run on until the token limit."""
        import mistral_common

        from mixchat.loader import random_model, save_native
        from mixchat.model.args import ModelArgs, MoeArgs

        args = ModelArgs(
            dim=64,
            n_layers=2,
            head_dim=16,
            hidden_dim=64,
            n_heads=4,
            n_kv_heads=2,
            vocab_size=32000,
            sliding_window=window,
            moe=MoeArgs(8, 2),
        )
        save_native(random_model(args, seed=0, std=0.2), folder)
        shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", folder / "tokenizer.model.v1")
        return folder

    def chat(self, data: Path, *extra: str, model: Path | None = None) -> list[str]:
        m = ["--model", str(model)] if model is not None else ["--model", str(self.tiny)]
        return ["chat", "--plain", *m, "--data-dir", str(data), *extra]

    def seed_conversation(self, data: Path, name: str, turns: int = 1) -> None:
        lines = b"".join(f"turn {i}\n".encode() for i in range(turns))
        rc, _, err = run(self.chat(data, "--conversation", name, "--max-tokens", "4"), stdin=lines)
        assert rc == 0, err

    # ---- locking ----------------------------------------------------------------------------------------------
    def locking(self) -> list[Callable[[], Result]]:
        def holder_and(second: list[str], what: str, expect_refused: bool) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                self.seed_conversation(data, "c")
                a = subprocess.Popen(
                    [PY, "-m", "mixchat", *self.chat(data, "--resume", "c", "--max-tokens", "4")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    cwd=REPO,
                    env=ENV,
                )
                assert a.stdin is not None
                a.stdin.write(b"from a\n")
                a.stdin.flush()
                deadline = time.monotonic() + 120
                while "from a" not in users(data, "c") and time.monotonic() < deadline:
                    time.sleep(0.05)
                args = [x.replace("DATA", str(data)) for x in second]
                rc, _, err = run(args, stdin=b"from b\n")
                a.stdin.write(b"from a again\n")
                a.stdin.close()
                a.wait(120)
                r = Result("locking", what, rc, err)
                kept = users(data, "c")
                r.lost = kept[-2:] != ["from a", "from a again"]  # the holder's turns all survive
                if expect_refused and (rc == 0 or "open in another" not in err):
                    r.lost = r.lost or "from b" not in " ".join(users(data, "c2"))  # accepted, and lost?
                    r.notes.append("second writer was not refused")
                return r

            return case

        chat2 = ["chat", "--plain", "--model", str(self.tiny), "--data-dir", "DATA", "--max-tokens", "4"]
        cases = [
            holder_and([*chat2, "--resume", "c"], "second chat --resume", True),
            holder_and([*chat2, "--conversation", "c"], "second chat --conversation", True),
            holder_and([*chat2, "--resume"], "second chat --resume (latest)", True),
            holder_and([*chat2, "--resume", "c", "--fork", "c2"], "fork while open", False),
            holder_and(["conversations", "show", "c", "--data-dir", "DATA"], "show while open", False),
            holder_and(["conversations", "export", "c", "--data-dir", "DATA"], "export while open", False),
            holder_and(["conversations", "rename", "c", "x", "--data-dir", "DATA"], "rename while open", True),
            holder_and(["conversations", "delete", "c", "--data-dir", "DATA"], "delete while open", True),
        ]

        def stale() -> Result:
            data = self.data()
            self.seed_conversation(data, "c")
            a = subprocess.Popen(
                [PY, "-m", "mixchat", *self.chat(data, "--resume", "c", "--max-tokens", "4")],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=REPO,
                env=ENV,
            )
            time.sleep(4)
            a.kill()
            a.wait()
            rc, _, err = run(self.chat(data, "--resume", "c", "--max-tokens", "4"), stdin=b"after\n")
            r = Result("locking", "stale lock (holder SIGKILLed)", rc, err)
            r.lost = users(data, "c")[-1:] != ["after"]
            return r

        def racing() -> Result:
            data = self.data()
            self.seed_conversation(data, "c")
            procs = [
                subprocess.Popen(
                    [PY, "-m", "mixchat", *self.chat(data, "--resume", "c", "--max-tokens", "4")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    cwd=REPO,
                    env=ENV,
                )
                for _ in range(2)
            ]
            outs = [p.communicate(f"p{i} one\np{i} two\n".encode(), timeout=240) for i, p in enumerate(procs)]
            kept = users(data, "c")
            ok = [i for i, p in enumerate(procs) if p.returncode == 0]
            r = Result(
                "locking", "two writers at once", max(p.returncode for p in procs), "".join(o[1].decode() for o in outs)
            )
            r.lost = any(f"p{i} two" not in kept for i in ok)  # every accepted writer keeps all its turns
            return r

        return [*cases, stale, racing]

    # ---- output -----------------------------------------------------------------------------------------------
    def output(self) -> list[Callable[[], Result]]:
        def chat_case(what: str, suffix: str, resume: bool) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                if resume:
                    self.seed_conversation(data, "o")
                extra = ["--resume", "o"] if resume else ["--conversation", "o"]
                rc, _, err = run(
                    self.chat(data, *extra, "--max-tokens", "300"),
                    stdin=b"hello\nsecond\n",
                    shell_suffix=suffix,
                    stdout=None,
                )
                r = Result("output", what + (" (resumed)" if resume else " (new)"), rc, err)
                r.lost = "hello" not in users(data, "o")
                return r

            return case

        cases = [chat_case(f"chat | head -c {n}", f"| head -c {n} >/dev/null", r) for n in (1, 3, 64) for r in (0, 1)]
        cases += [chat_case("chat > /dev/full", "> /dev/full", r) for r in (0, 1)]
        cases += [chat_case("chat >&-", ">&-", r) for r in (0, 1)]

        def other(what: str, args: Callable[[Path], list[str]], suffix: str) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                self.seed_conversation(data, "o", turns=3)
                rc, _, err = run(args(data), shell_suffix=suffix, stdout=None)
                r = Result("output", what, rc, err)
                r.lost = len(users(data, "o")) != 3
                return r

            return case

        for suffix, label in (
            ("| head -c 3 >/dev/null", "| head -c 3"),
            ("> /dev/full", "> /dev/full"),
            (">&-", ">&-"),
        ):
            cases += [
                other(
                    f"generate {label}",
                    lambda d: ["generate", "--model", str(self.tiny), "--prompt", "hi", "--max-tokens", "300"],
                    suffix,
                ),
                other(
                    f"generate --json {label}",
                    lambda d: [
                        "generate",
                        "--model",
                        str(self.tiny),
                        "--prompt",
                        "hi",
                        "--prompt",
                        "yo",
                        "--json",
                        "--max-tokens",
                        "50",
                    ],
                    suffix,
                ),
                other(
                    f"conversations show {label}",
                    lambda d: ["conversations", "show", "o", "--data-dir", str(d)],
                    suffix,
                ),
                other(
                    f"conversations export {label}",
                    lambda d: ["conversations", "export", "o", "--data-dir", str(d)],
                    suffix,
                ),
                other(f"conversations list {label}", lambda d: ["conversations", "list", "--data-dir", str(d)], suffix),
            ]
        return cases

    # ---- storage ----------------------------------------------------------------------------------------------
    def storage(self) -> list[Callable[[], Result]]:
        def save_fault(what: str, fault: str, resume: bool) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                if resume:
                    self.seed_conversation(data, "s")
                extra = ["--resume", "s"] if resume else ["--conversation", "s"]
                rc, _, err = run(self.chat(data, *extra, "--max-tokens", "4"), stdin=b"hello\n", fault=fault)
                r = Result("storage", what + (" (resumed)" if resume else " (new)"), rc, err)
                r.lost = "hello" not in users(data, "s")  # the disk refused it: lost, but it must not be silent
                if not resume:
                    root = data / "conversations"
                    left = [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
                    if left and transcript(data, "s") is None:
                        r.notes.append("an empty folder was left")
                        r.stderr += "\n(empty folder left)"
                return r

            return case

        cases = []
        for resume in (False, True):
            cases += [
                save_fault("ENOSPC in the cache write", "mixchat.session.cachefile:save_file:28", resume),
                save_fault("ENOSPC in the transcript write", "mixchat.session.store:atomic_write_bytes:28", resume),
                save_fault("EROFS on mkdir", "Path:mkdir:30", resume),
                save_fault("EACCES on replace", "os:replace:13", resume),
            ]

        def manage(what: str, args: Callable[[Path], list[str]], fault: str | None, check: str) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                self.seed_conversation(data, "m")
                before = transcript(data, "m")
                rc, _, err = run(args(data), fault=fault)
                r = Result("storage", what, rc, err)
                if check == "kept":
                    r.lost = transcript(data, "m") != before
                return r

            return case

        d = lambda data: ["--data-dir", str(data)]  # noqa: E731
        cases += [
            manage(
                "rename, ENOSPC on the transcript",
                lambda x: ["conversations", "rename", "m", "n", *d(x)],
                "mixchat.session.store:atomic_write_bytes:28",
                "kept",
            ),
            manage("rename, EROFS", lambda x: ["conversations", "rename", "m", "n", *d(x)], "os:rename:30", "kept"),
            manage("delete, EROFS", lambda x: ["conversations", "delete", "m", *d(x)], "os:rename:30", "kept"),
            manage("delete, EACCES", lambda x: ["conversations", "delete", "m", *d(x)], "os:rename:13", "kept"),
            manage("list, EACCES", lambda x: ["conversations", "list", *d(x)], "Path:iterdir:13", "kept"),
            manage(
                "show, EACCES on read", lambda x: ["conversations", "show", "m", *d(x)], "Path:read_bytes:13", "kept"
            ),
            manage("resume, EACCES on read", lambda x: [*self.chat(x, "--resume", "m")], "Path:read_bytes:13", "kept"),
        ]

        def data_is_file(what: str, args: Callable[[Path], list[str]]) -> Callable[[], Result]:
            def case() -> Result:
                f = self.data()
                f.write_text("not a folder")
                rc, _, err = run(args(f), stdin=b"hello\n")
                return Result("storage", what, rc, err, lost=rc == 0)

            return case

        cases += [
            data_is_file(f"data dir is a file: {w}", a)
            for w, a in (
                ("chat", lambda f: self.chat(f)),
                ("list", lambda f: ["conversations", "list", "--data-dir", str(f)]),
                ("show", lambda f: ["conversations", "show", "x", "--data-dir", str(f)]),
                ("rename", lambda f: ["conversations", "rename", "x", "y", "--data-dir", str(f)]),
            )
        ]

        def weights_fault() -> Result:
            rc, _, err = run(["generate", "--model", str(self.tiny), "--prompt", "hi"], fault="mixchat.loader:open:13")
            r = Result("storage", "unreadable weights file", rc, err)
            if "No such file" in err:
                r.notes.append("wrong reason")
                r.stderr += "\n(wrong reason: not found)"
            return r

        return [*cases, weights_fault]

    # ---- numbers ----------------------------------------------------------------------------------------------
    def numbers(self) -> list[Callable[[], Result]]:
        cases: list[Callable[[], Result]] = []

        def cli(what: str, args: list[str], stdin: bytes = b"hi\n") -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                full = [a.replace("DATA", str(data)) for a in args]
                rc, _, err = run(full, stdin=stdin)
                return Result("numbers", what, rc, err, lost=False)

            return case

        for seed in (str(2**63), str(2**64), "-1", "1e30", "abc", str(10**40)):
            cases.append(
                cli(
                    f"generate --seed {seed[:12]}",
                    ["generate", "--model", str(self.tiny), "--prompt", "hi", "--seed", seed],
                )
            )
            cases.append(cli(f"chat --seed {seed[:12]}", [*self.chat(Path("DATA")), "--seed", seed]))
        for flag, value in (
            ("--max-tokens", str(10**30)),
            ("--temperature", "nan"),
            ("--temperature", "inf"),
            ("--top-p", "2"),
            ("--chunk-size", str(10**20)),
            ("--experts-per-token", "999"),
            ("--experts-per-token", "0"),
            ("--max-context", "0"),
        ):
            cases.append(cli(f"chat {flag} {value[:12]}", [*self.chat(Path("DATA")), flag, value]))

        def transcript_value(what: str, edit: Callable[[dict], None]) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                self.seed_conversation(data, "n")
                path = next((data / "conversations").glob("*/transcript.json"))
                d = json.loads(path.read_text())
                edit(d)
                path.write_text(json.dumps(d))
                rc, _, err = run(self.chat(data, "--resume", "n", "--max-tokens", "4"), stdin=b"more\n")
                r = Result("numbers", what, rc, err)
                r.lost = rc == 0 and "more" not in users(data, "n")  # a turn dropped while exiting 0
                return r

            return case

        for what, edit in (
            ("transcript seed 2^70", lambda d: d["settings"].update(seed=2**70)),
            ("transcript seed -5", lambda d: d["settings"].update(seed=-5)),
            ("transcript experts_per_token 999", lambda d: d["settings"].update(experts_per_token=999)),
            ("transcript max_tokens 0", lambda d: d["settings"].update(max_tokens=0)),
            ("transcript temperature 'hot'", lambda d: d["settings"].update(temperature="hot")),
            ("transcript chunk_size 10^30", lambda d: d["settings"].update(chunk_size=10**30)),
        ):
            cases.append(transcript_value(what, edit))

        def checkpoint(what: str, params: dict | None = None, tensor: str | None = None) -> Callable[[], Result]:
            def case() -> Result:
                import torch
                from safetensors.torch import load_file, save_file

                folder = self.data()
                shutil.copytree(self.tiny, folder)
                if params:
                    p = json.loads((folder / "params.json").read_text())
                    p.update(params)
                    (folder / "params.json").write_text(json.dumps(p))
                if tensor:
                    w = load_file(folder / "consolidated.safetensors")
                    t = w["layers.0.attention.wk.weight"]
                    w["layers.0.attention.wk.weight"] = {
                        "nan": lambda: t.index_fill(0, torch.tensor([3]), float("nan")),
                        "inf": lambda: t.index_fill(0, torch.tensor([3]), float("inf")),
                        "int32": lambda: t.to(torch.int32),
                        "int8": lambda: t.to(torch.int8),
                        "bool": lambda: t > 0,
                    }[tensor]()
                    save_file(w, folder / "consolidated.safetensors")
                rc, out, err = run(["generate", "--model", str(folder), "--prompt", "hi", "--max-tokens", "4"])
                r = Result("numbers", what, rc, err)
                r.lost = rc == 0 and ("⁇" in out.decode("utf-8", "replace"))  # nonsense printed as if fine
                if rc == 0:
                    r.notes.append("accepted")
                    r.stderr += "\n(accepted a broken checkpoint)"
                    r.lost = True
                return r

            return case

        for what, params in (
            ("vocab_size 10^12", {"vocab_size": 10**12}),
            ("dim 10^9", {"dim": 10**9}),
            ("hidden_dim 7", {"hidden_dim": 7}),
            ("n_heads 0", {"n_heads": 0}),
            ("norm_eps NaN", {"norm_eps": float("nan")}),
            ("norm_eps -1", {"norm_eps": -1}),
            ("rope_theta inf", {"rope_theta": float("inf")}),
            ("num_experts 1000", {"moe": {"num_experts": 1000, "num_experts_per_tok": 2}}),
        ):
            cases.append(checkpoint(f"params {what}", params=params))
        for t in ("nan", "inf", "int32", "int8", "bool"):
            cases.append(checkpoint(f"weights {t}", tensor=t))

        def full_context() -> Result:
            data = self.data()
            rc, _, err = run(
                self.chat(
                    data,
                    "--conversation",
                    "f",
                    "--max-context",
                    "24",
                    "--max-tokens",
                    "8",
                    "--temperature",
                    "0",
                    model=self.full,
                ),
                stdin=b"one\ntwo\nthree\nfour\n",
            )
            return Result("numbers", "full context, full attention", rc, err, lost=rc == 0)

        return [*cases, full_context]

    # ---- input ------------------------------------------------------------------------------------------------
    def input(self) -> list[Callable[[], Result]]:
        def case_of(
            what: str,
            args: Callable[[Path], list[str]],
            stdin: bytes | None,
            suffix: str = "",
            expect_saved: str | None = None,
        ) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                rc, _, err = run(args(data), stdin=stdin, shell_suffix=suffix)
                r = Result("input", what, rc, err)
                if expect_saved is not None:
                    r.lost = expect_saved not in " ".join(users(data, "i"))
                return r

            return case

        garbage = bytes(random.Random(1).randrange(256) for _ in range(4000))
        gen = lambda d: ["generate", "--model", str(self.tiny), "--prompts-file", "-", "--max-tokens", "4"]  # noqa: E731
        chat = lambda d: self.chat(d, "--conversation", "i", "--max-tokens", "4")  # noqa: E731
        return [
            case_of("chat <&-", chat, None, "<&-"),
            case_of("generate --prompts-file - <&-", gen, None, "<&-"),
            case_of("generate binary stdin", gen, garbage),
            case_of("generate NUL stdin", gen, b"a\x00b\n"),
            case_of("generate empty stdin", gen, b""),
            case_of("chat binary stdin", chat, garbage + b"\nafter garbage\n", expect_saved="after garbage"),
            case_of("chat NUL in a line", chat, b"x\x00y\nplain\n", expect_saved="plain"),
            case_of("chat invalid UTF-8 line", chat, b"caf\xe9\nnext\n", expect_saved="next"),
            case_of("chat 100k-character line", chat, b"w " * 50000 + b"\n", expect_saved="w w"),
            case_of("chat empty stdin", chat, b""),
            case_of(
                "generate --prompts-file DIR",
                lambda d: ["generate", "--model", str(self.tiny), "--prompts-file", str(REPO)],
                b"",
            ),
            case_of(
                "generate --prompts-file missing",
                lambda d: ["generate", "--model", str(self.tiny), "--prompts-file", "/nonexistent"],
                b"",
            ),
        ]

    # ---- signals ----------------------------------------------------------------------------------------------
    def signals(self) -> list[Callable[[], Result]]:
        rng = random.Random(13)

        def early(what: str, args: Callable[[Path], list[str]], delay: float, signum: int) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                p = subprocess.Popen(
                    [PY, "-m", "mixchat", *args(data)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    cwd=REPO,
                    env=ENV,
                )
                time.sleep(delay)
                p.send_signal(signum)
                _, err = p.communicate(timeout=120)
                r = Result(
                    "signals",
                    f"{what}, {signal.Signals(signum).name} at {delay:.2f} s",
                    p.returncode,
                    err.decode("utf-8", "replace"),
                )
                if p.returncode not in (128 + signum, -signum):
                    r.notes.append(f"status {p.returncode}")
                return r

            return case

        def mid_reply(signum: int, extra_delay: float, resume: bool) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                if resume:
                    self.seed_conversation(data, "g")
                which = ["--resume", "g"] if resume else ["--conversation", "g"]
                p = subprocess.Popen(
                    [PY, "-m", "mixchat", *self.chat(data, *which, "--max-tokens", "100000", "--temperature", "1")],
                    bufsize=0,  # unbuffered: read(1) below must not pull later bytes into a buffer that
                    # communicate() (which reads the file descriptor itself) would never see
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=REPO,
                    env=ENV,
                )
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write(b"talk\n")
                p.stdin.flush()
                first = p.stdout.read(1)  # the reply has begun
                time.sleep(extra_delay)
                p.send_signal(signum)
                out, err = p.communicate(timeout=120)
                name = signal.Signals(signum).name
                r = Result(
                    "signals",
                    f"{name} mid-reply +{extra_delay:.2f} s" + (" (resumed)" if resume else ""),
                    p.returncode,
                    err.decode("utf-8", "replace"),
                )
                shown = (first + out).decode("utf-8", "replace")
                d = transcript(data, "g")
                reply = d["messages"][-1] if d else None
                r.lost = not (
                    reply
                    and reply.get("role") == "assistant"
                    and shown.rstrip("\n")
                    and reply["content"].startswith(shown.rstrip("\n")[:1])
                )
                if signum == signal.SIGINT:
                    r.lost = r.lost or p.returncode != 0  # first Ctrl-C stops the reply; EOF then ends it
                return r

            return case

        cases = []
        for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0):
            cases.append(early("chat start-up", lambda d: self.chat(d), delay, signal.SIGINT))
            cases.append(
                early(
                    "generate start-up",
                    lambda d: ["generate", "--model", str(self.tiny), "--prompt", "hi", "--max-tokens", "2000"],
                    delay,
                    signal.SIGINT,
                )
            )
        for signum in (signal.SIGTERM, signal.SIGHUP):
            for delay in (0.1, 0.5, 1.5):
                cases.append(early("chat start-up", lambda d: self.chat(d), delay, signum))
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            for resume in (False, True):
                for _ in range(2):
                    cases.append(mid_reply(signum, rng.uniform(0.0, 1.0), resume))
        return cases

    # ---- transcripts ------------------------------------------------------------------------------------------
    def transcripts(self) -> list[Callable[[], Result]]:
        def edited(what: str, edit: Callable[[dict], None], must_report: bool = True) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                self.seed_conversation(data, "t", turns=2)
                path = next((data / "conversations").glob("*/transcript.json"))
                d = json.loads(path.read_text())
                edit(d)
                path.write_text(json.dumps(d) if isinstance(d, dict) else str(d))
                rc, _, err = run(self.chat(data, "--resume", "t", "--max-tokens", "4"), stdin=b"more\n")
                r = Result("transcripts", what, rc, err)
                # Silent: the edit went unnoticed (exit 0, nothing said) - the model then continues another text.
                r.lost = must_report and rc == 0 and not err.strip()
                kept = list((data / "conversations").rglob("transcript*.json"))
                if not kept:
                    r.lost = True
                    r.notes.append("transcript gone")
                return r

            return case

        def bump(d: dict) -> None:
            d["ids"][len(d["ids"]) // 2] = (d["ids"][len(d["ids"]) // 2] + 7) % 32000

        return [
            edited("token ids edited", bump),
            edited("token ids cut short", lambda d: d.update(ids=d["ids"][:-5])),
            edited("token ids extended", lambda d: d.update(ids=d["ids"] + [5, 6, 7])),
            edited("message text edited", lambda d: d["messages"][0].update(content="something else")),
            edited("reply text edited", lambda d: d["messages"][1].update(content="not what was said")),
            edited("role changed", lambda d: d["messages"][2].update(role="assistant")),
            edited("message removed", lambda d: d["messages"].pop(1)),
            edited("fingerprint removed", lambda d: d["model"].pop("fingerprint")),
            edited("settings removed", lambda d: d.pop("settings"), must_report=False),
            edited("ids removed", lambda d: d.pop("ids")),
            edited("not JSON", lambda d: d.clear() or d.update({"x": 1}) or None),
            edited("newer format", lambda d: d.update(format_version=99)),
            edited("messages not a list", lambda d: d.update(messages="oops")),
        ]

    # ---- names ------------------------------------------------------------------------------------------------
    def names(self) -> list[Callable[[], Result]]:
        def alias(what: str, args: Callable[[Path], list[str]]) -> Callable[[], Result]:
            def case() -> Result:
                data = self.data()
                self.seed_conversation(data, "rb2")
                before = transcript(data, "rb2")
                rc, _, err = run(args(data), stdin=b"hello\n")
                r = Result("names", what, rc, err)
                after = transcript(data, "rb2")
                r.lost = after is None or after["messages"] != before["messages"]  # rb2 reached through an alias
                if rc == 0:
                    r.notes.append("alias accepted")
                    r.stderr += "\n(alias accepted)"
                    r.lost = True
                return r

            return case

        cases = []
        for name in ("rb/../rb2", "rb2/.", "./rb2", "../conversations/rb2", "/rb2", "rb2/", "..", ".", "a/b"):
            cases.append(
                alias(f"delete {name!r}", lambda d, n=name: ["conversations", "delete", n, "--data-dir", str(d)])
            )
            cases.append(alias(f"chat --resume {name!r}", lambda d, n=name: self.chat(d, "--resume", n)))
        cases.append(
            alias("rename rb2 to '..'", lambda d: ["conversations", "rename", "rb2", "..", "--data-dir", str(d)])
        )
        cases.append(alias("export 'rb2/.'", lambda d: ["conversations", "export", "rb2/.", "--data-dir", str(d)]))

        def empty_data_dir() -> Result:
            rc, _, err = run(["conversations", "list", "--data-dir", ""])
            return Result("names", '--data-dir ""', rc, err, lost=rc == 0)

        return [*cases, empty_data_dir]


CATEGORIES = ("locking", "output", "storage", "numbers", "input", "signals", "transcripts", "names")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", choices=CATEGORIES, action="append")
    ap.add_argument("--verbose", action="store_true", help="print every case that went wrong")
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mixchat-probe-"))
    try:
        probe = Probe(work)
        cases = [(c, f) for c in (opts.only or CATEGORIES) for f in getattr(probe, c)()]
        print(f"{len(cases)} cases, {opts.jobs} at a time", file=sys.stderr)

        def attempt(item: tuple[str, Callable[[], Result]]) -> Result:
            category, f = item
            try:
                return f()
            except Exception as e:  # the probe's own expectations failed (e.g. a timeout): count it as a loss
                return Result(category, f"{getattr(f, '__qualname__', f)}", -999, f"probe error: {e!r}", lost=True)

        with ThreadPoolExecutor(opts.jobs) as pool:
            results = list(pool.map(attempt, cases))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for c in opts.only or CATEGORIES:
        rs = [r for r in results if r.category == c]
        rows.append(
            (
                c,
                len(rs),
                sum(r.traceback for r in rs),
                sum(r.abort for r in rs),
                sum(r.lost for r in rs),
                sum(r.silent for r in rs),
                sum(r.multi_line for r in rs),
            )
        )
    head = ("category", "cases", "tracebacks", "aborts", "losses", "silent losses", "multi-line errors")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    total = ("total", *(sum(r[i] for r in rows) for i in range(1, len(head))))
    print("| " + " | ".join(f"**{x}**" for x in total) + " |")
    bad = [r for r in results if r.traceback or r.abort or r.lost or r.multi_line]
    for r in bad if opts.verbose else bad[:40]:
        tail = r.stderr.strip().splitlines()[-3:]
        print(
            f"- [{r.category}] {r.case}: status {r.rc}, lost={r.lost} {r.notes} :: {' | '.join(tail)[:300]}",
            file=sys.stderr,
        )
    return 1 if any(r.traceback or r.abort or r.silent for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
