"""The ``cpu`` backend's GEMM family (linear, quantize, int8_linear). Imported by :mod:`._cpu`."""
