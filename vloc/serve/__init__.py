"""HTTP service: ``vloc serve --map MAP`` or :func:`vloc.serve.app.serve` (see :mod:`vloc.serve.app`)."""
