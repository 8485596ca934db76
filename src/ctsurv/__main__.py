"""``python -m ctsurv`` runs the command line."""

from ctsurv.cli import app

app()
