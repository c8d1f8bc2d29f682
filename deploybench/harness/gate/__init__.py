"""The regression gate: compare a current run with a baseline, cell by cell, and decide.

Plain modules, no pytest import (the plugin calls ``verdict.gate_results``): ``statistics`` (the
arithmetic below), ``interleave`` (re-running two artifacts in alternating blocks), ``verdict``
(a verdict per cell and figure), ``command`` (``deploybench gate``). None of them imports the report.

Why not a test on two runs' samples: on a shared CI box the median of a run drifts between runs
(measured here: 6.8 % coefficient of variation of run medians, a machine that flips between two
speed states, A/A median ratios up to 22 %), while the confidence interval of one run's median is
about +-0.5 % wide. A Mann-Whitney or bootstrap test on two separate runs calls that drift a
regression. The gate therefore cancels or measures drift, in three modes, best first:

``interleaved``  the baseline and current artifacts run in the SAME process in alternating
                 blocks (A B B A ...); each block pair gives a ratio of block medians, drift
                 common to both cancels, and the CI of the median of block ratios is
                 distribution-free (binomial order statistics).
``history``      the current median is judged against the spread of run medians stored for
                 this cell (``--history``): drift is measured, not assumed. Fewer than
                 ``MIN_HISTORY_RUNS`` runs -> the spread is unknown -> small changes are
                 ``inconclusive``.
``two-run``      only two runs: the within-run CI is widened by a drift allowance (default
                 20 %, above the worst A/A ratio of the design measurement; doubled when a run
                 was itself unstable); big changes are ``regression``, small ones
                 ``inconclusive``. Drift on a loaded box can exceed any fixed allowance: use
                 ``--interleave`` or ``--history`` for a gate you can trust.

The verdict rule, on the ratio current/baseline with interval [low, high] widened by drift:
``regression`` when low > 1 + threshold/2 and high > 1 + threshold (surely slower, and possibly
by the threshold or more); ``improvement`` symmetrically; ``unchanged`` when the whole interval
lies within [1/(1+threshold), 1+threshold]; otherwise ``inconclusive``.
"""
