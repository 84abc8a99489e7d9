"""Packaging glue that pyproject.toml cannot express: ship the top-level `themes/` folder in the wheel.

The TUI's colour themes are data files kept at the top of the repository (where users and theme authors
find them), but an installed mixchat must carry them. Mapping the folder onto the package
`mixchat.themes` puts the TOML files at `mixchat/themes/*.toml` inside the wheel, next to the code that
reads them. Everything else about the package is declared in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["mixchat*"]), "mixchat.themes"],
    package_dir={"mixchat.themes": "themes"},
    package_data={"mixchat.themes": ["*.toml"]},
)
