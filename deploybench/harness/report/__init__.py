"""Reports of a matrix: the terminal table, Markdown for a pull request, HTML with plots, and sinks."""
