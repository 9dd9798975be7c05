"""Performance benchmarks of the decode-and-optimise loop (see bench/RESULTS.md)."""
