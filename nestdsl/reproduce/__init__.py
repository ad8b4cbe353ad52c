"""Reproducing the paper's claims at laptop scale: suites as data, one runner, one report.

    suite.py    a suite file (examples/reproduce/<suite>.yaml): rows, seeds, budget, claims
    job.py      one run: train a row at one seed, score it by the suite's kind
    runner.py   every job of a suite, in parallel processes, resumable
    report.py   tables beside the paper's figures and a verdict per claim (docs/reproduction.md)

`nestdsl reproduce <suite>` is the command line.
"""

from nestdsl.reproduce.suite import Suite, SuiteError, load_suite, suite_names

__all__ = ["Suite", "SuiteError", "load_suite", "suite_names"]
