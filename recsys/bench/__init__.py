"""``recsys-bench``: the one benchmark command (see :mod:`recsys.bench.cli`)."""
