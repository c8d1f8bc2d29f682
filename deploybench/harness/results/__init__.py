"""Results on disk: ``io`` reads every results format (run JSON, merged JSON, pytest-benchmark JSON) and
writes files atomically; ``matrix`` holds ``Matrix``, the one ``SCHEMA`` name and ``best_cell``;
``history`` lists stored runs; ``merge`` joins shards and machines. Nothing here imports the gate, and
the report only when ``Matrix.table()`` is called."""
