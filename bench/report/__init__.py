"""Reports from the results store: ``report.md``, one self-contained ``report.html`` and the figures
(PNG and SVG) under ``figures/`` (``bench.report.write``); and the regression gate
(``bench.report.check``). Kept empty so that importing the light modules (``stats``, ``results``)
does not import matplotlib and seaborn."""
