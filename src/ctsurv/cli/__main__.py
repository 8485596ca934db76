"""``python -m ctsurv.cli`` (as ``accelerate launch -m ctsurv.cli ...`` runs it) runs the command line."""

from ctsurv.cli import main

main()
