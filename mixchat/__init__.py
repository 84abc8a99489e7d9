"""mixchat: a terminal chat app that runs Mistral/Mixtral models and shows their expert routing."""

__version__ = "0.1.0"
