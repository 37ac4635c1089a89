"""The pieces the benchmark scripts share: the variant catalogue, running and reading runs, figures and reports.

The scripts in ``scripts/`` import it as ``benchlib`` (Python puts a script's own folder first on ``sys.path``).
"""
