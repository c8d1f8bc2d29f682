"""The regression gate: compare a current run with a baseline, cell by cell, and decide.

Plain modules, no pytest import (the plugin calls ``command.judge``): ``statistics`` (the arithmetic
below), ``interleave`` (re-running two artifacts in alternating blocks), ``verdict`` (a verdict per
cell and figure), ``pairs`` (which cells pair up, which artifacts are the same), ``sources`` (the two
sides of a change: git refs, model files, results files), ``command`` (``deploybench gate``) and
``compare`` (``deploybench compare`` and ``deploybench verdicts``). None of them imports the report.

Why not a test on two runs' samples: on a shared CI box the median of a run drifts between runs
(measured here: 6.8 % coefficient of variation of run medians, a machine that flips between two
speed states, A/A median ratios up to 22 %, two runs of identical files once read 0.613), while
the confidence interval of one run's median is about +-0.5 % wide. A test on two separate runs
calls that drift a change. Latency is therefore judged in these modes:

``same artifact``  both sides' artifacts are byte-identical (or, for a torch cell, the model's
                   fingerprint is): ``unchanged`` without timing anything.
``interleaved``    the baseline and current artifacts run in the SAME worker process in
                   alternating blocks (A B B A ...); each block pair gives a ratio of block
                   medians, drift common to both cancels, and the CI of the median of block ratios
                   is distribution-free (binomial order statistics). Sequential: the verdict is
                   checked after each of ``statistics.LOOKS`` block pairs and sampling stops at the
                   first decided look, each look at confidence 1 - (1 - CONFIDENCE) / len(LOOKS).
``history``        the current median is judged against the spread of run medians stored for
                   this cell (``--history``): drift is measured, not assumed. Fewer than
                   ``MIN_HISTORY_RUNS`` runs -> the spread is unknown -> ``inconclusive``.
``two-run``        only two separate runs and no history: latency is ``inconclusive`` with the
                   note that it is not judged; drift it cannot measure never becomes a verdict.

Peak memory and accuracy are judged from each side's own measurement in every mode.

The verdict rule, on the ratio current/baseline with interval [low, high]: ``regression`` when
low > 1 + threshold/2 and high > 1 + threshold (surely slower, and possibly by the threshold or
more); ``improvement`` symmetrically; ``unchanged`` when the whole interval lies within
[1/(1+threshold), 1+threshold]; otherwise ``inconclusive``. Error rates of the interleaved mode,
with CONFIDENCE 0.99 over five looks: a true ratio of 1 is a ``regression`` at most 0.5 % of the
time, a true change of at least the threshold is ``unchanged`` at most 0.5 % of the time
(Bonferroni over the looks, one side of each interval), assuming independent block ratios.
"""
