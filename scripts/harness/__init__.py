"""The experiment harness of ``scripts/``: code the reproduction and benchmark scripts share, kept out of the
``memlm`` library.

- :mod:`harness.architectures`: the named architectures of one width and depth that the reproductions compare;
- :mod:`harness.recipes`: the training recipe of a synthetic-task run (MQAR, passkey);
- :mod:`harness.grid`: a grid of training runs, in this process or in worker processes;
- :mod:`harness.runs`: the command-line flags the reproduction scripts share, and what their reports record
  (the command, the machine, the figure).

``python scripts/NAME.py`` puts ``scripts/`` on ``sys.path``, so the scripts import ``harness`` from any working
directory; the tests find it through pytest's ``pythonpath`` (pyproject.toml).
"""
