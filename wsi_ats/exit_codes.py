"""The exit codes of every ``wsi-ats`` command, defined once.

0 success; 1 some work failed (e.g. a slide in a batch); 2 bad usage or bad input
(argparse's own convention: a bad manifest or recipe, an unreadable slide for ``info``).
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
