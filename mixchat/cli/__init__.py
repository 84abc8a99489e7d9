"""Command-line front ends: argument parsing, one-line errors, and the subcommands."""
