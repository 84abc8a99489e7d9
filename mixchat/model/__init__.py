"""Pure-torch Mistral/Mixtral model: no cache state, no sampling, no front-end imports."""

from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.layout import BatchLayout
from mixchat.model.transformer import Transformer

__all__ = ["BatchLayout", "ModelArgs", "MoeArgs", "Transformer"]
