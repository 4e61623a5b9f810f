"""``python -m v2v`` runs the ``v2v`` command line."""

from v2v.signaling.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
