"""Placeholder: filled in by its owner."""


def register(app) -> None:
    pass
