"""Training of the built-in chat model: corpus preparation, tokenizer, packed token datasets.

This package is only used to *build* the built-in model; the app never imports it at run time. The
corpus lives outside the repository (see the model card for its sources and licenses); only derived
artefacts (the tokenizer and the trained weights) ship with the project.

- `corpus`: source files -> `Dialogue` objects (user/assistant turns), held-out split, placeholders.
- `wordnet`: WordNet with its sense order (Debian's index files), definition dialogues of several words.
- `synthetic`: the project's own template turns (memory across turns, identity, refusals, capitals).
- `heldout`: the evaluation sets, fixed before training and kept out of it.
- `mix`: the v6 training mix of all of the above, repeats included.
- `spm`: SentencePiece tokenizer training with Mistral v3's special-token layout.
- `tokens`: Mistral v3 chat encoding with a loss mask, packing, safetensors datasets.
"""
