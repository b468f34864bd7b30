"""Does the hybrid pay off? BO-only versus IFT-with-defaults versus hybrid at equal wall-clock budget.

    hybrid-hpo compare searches/compare_digits_few.yaml

:mod:`~hybrid_hpo.compare.spec` reads the comparison file, :mod:`~hybrid_hpo.compare.run` runs the
strategies, :mod:`~hybrid_hpo.compare.summary` selects each strategy's model by the selection split
and builds the table, :mod:`~hybrid_hpo.compare.plots` draws test metric versus wall time and the
hybrid's parameter importances, :mod:`~hybrid_hpo.compare.comparison` checks the input, runs all
of it and writes the results dir, :mod:`~hybrid_hpo.compare.saved` reads finished ones back and
merges reruns into them, :mod:`~hybrid_hpo.compare.command` is the CLI.
"""
