"""``python -m seis_sklearn`` runs the ``seis`` command line."""

from .cli import console

if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    console()
