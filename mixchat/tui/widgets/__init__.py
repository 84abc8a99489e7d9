"""Widgets of the chat screen: transcript, input, routing panel parts, cache gauge, status line."""
