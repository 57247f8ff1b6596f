"""lit-distill's benchmarks: scripts run as modules (``python -m benchmarks.<group>.<script>``), grouped by what
they measure (``quality``, ``speed``, ``scale``), with their shared helpers in ``benchmarks._lib``. See
docs/benchmarks.md."""
