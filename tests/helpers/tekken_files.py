"""Tekken files for templates v7 and later, derived from the real ones that ship with mistral-common.

mistral-common's data folder holds Tekken vocabularies of template v3 only (tekken_240718.json: Mistral Nemo;
tekken_240911.json: Pixtral 12B, the vocabulary Mistral Small 3.x and Ministral reuse). Their v7+ files (Small
3.x, Magistral, Devstral) carry the same vocabulary with `config.version` raised and an explicit special-token
list, which v11 and later require; that is what `derived_tekken` writes. Both sides of every test read the
same derived file, so nothing here decides an expected id.
"""

from __future__ import annotations

import json
from pathlib import Path

import mistral_common

DATA = Path(mistral_common.__file__).parent / "data"
NEMO_TEKKEN = DATA / "tekken_240718.json"
SMALL_TEKKEN = DATA / "tekken_240911.json"

_LEGACY = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
]  # fmt: skip
_LATER = ["[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]"]  # v11 needs [ARGS]/[CALL_ID]; v13 may use [THINK]


def derived_tekken(version: str, folder: Path, source: Path = SMALL_TEKKEN) -> Path:
    """`source` rewritten as a template-`version` file with an explicit special-token list; returns its path."""
    data = json.loads(source.read_text(encoding="utf-8"))
    data["config"]["version"] = version
    data.pop("image", None)
    names = _LEGACY + [f"<SPECIAL_{i}>" for i in range(len(_LEGACY), 32)] + _LATER
    data["special_tokens"] = [{"rank": i, "token_str": n, "is_control": True} for i, n in enumerate(names)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tekken.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
