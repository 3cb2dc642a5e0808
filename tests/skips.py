"""Why tests skip, said once."""

PYTRITON_MISSING = (
    "nvidia-pytriton is not installed in this environment: it pins numpy<2, so the tests that start "
    "Triton run in the test-triton environment (the README's test command makes both)"
)
