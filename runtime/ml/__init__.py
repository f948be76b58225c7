"""Streaming model monitoring: plain numpy detectors, no Ray and no I/O."""
