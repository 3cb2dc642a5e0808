"""One module per runtime. Each imports its runtime only inside functions."""
