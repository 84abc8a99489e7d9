"""Screens of the app: loading, chat, conversations, settings, help, and small dialogs."""
