"""``python -m theia_frames`` runs the ``theia-frames`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
