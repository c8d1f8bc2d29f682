# The repo's own pytest configuration. The deploybench plugin itself comes from the `pytest11` entry
# point (deploybench.harness.plugin), exactly as in a user's project; this file adds only what the
# repo's tests need.
