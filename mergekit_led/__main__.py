"""``python -m mergekit_led`` runs the ``mergekit-led`` command line."""

from mergekit_led.cli import main

main()
