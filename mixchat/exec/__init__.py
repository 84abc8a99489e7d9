"""How a forward pass runs on this device; see `mixchat.exec.choose` for the one place a path is picked."""
