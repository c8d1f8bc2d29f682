"""Decide, not only measure: the one cell to ship for each model under budgets on accuracy drop, latency,
peak memory and artifact size, with the alternatives on the Pareto front and every rejected cell with
the budget it broke.

Why it is built this way:

- It reads results, it does not measure: ``deploybench recommend RESULTS.json`` decides from any results
  file (a run, a merge, pytest-benchmark JSON), and ``deploybench recommend --models ...`` runs the
  cells first through the one pipeline ``deploybench run`` uses. So a budget can be changed and the
  answer asked again without measuring anything twice.
- A budget a cell cannot be shown to keep is a budget it breaks: a figure not measured (memory under
  ``--no-memory``, a torch cell's size) rejects the cell under a budget on it, and a cell that fails
  its precision's tolerance is rejected as the table's ★ never picks it. A recommendation never rests
  on a figure nobody measured.
- The accuracy drop is on the task metric where the model has one; whether that metric is held out
  from calibration is checked by content (``held_out``), not assumed, and a model without labelled
  data is told plainly that its accuracy is not confirmed.
- ``budgets`` (parsing), ``figures`` (what each cell weighs), ``decide`` (budgets broken, Pareto front,
  choice: plain arithmetic), ``held_out``, ``recommendation`` (the answer per model) and ``render``
  (terminal, Markdown, JSON, HTML) are separate so each is tested as such; ``command`` is the CLI edge.
"""

from deploybench.harness.recommend.budgets import Budgets
from deploybench.harness.recommend.recommendation import ModelRecommendation, Recommendation, recommend

__all__ = ["Budgets", "ModelRecommendation", "Recommendation", "recommend"]
