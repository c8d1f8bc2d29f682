"""Reports of a matrix: ``table`` (the rows every report shows, and the terminal table), ``markdown``
(a pull-request comment), ``html`` (one page with ``plots``), ``notes`` (what a cell's row says
beyond its figures, as numbered footnotes), ``command`` (``deploybench report``) and
the ``mlflow_sink``. Reports read results through ``results`` and show the gate's verdicts."""
