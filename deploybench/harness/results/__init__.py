"""Reading and writing every results format (run JSON, merged JSON, pytest-benchmark JSON), stored
history and merging: the one place that knows the schema."""
