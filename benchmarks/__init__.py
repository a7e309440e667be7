"""Side-by-side performance benchmarks of uncertainty_robust (``python benchmarks/run.py`` or
``python -m benchmarks``; the GPU check is ``bash benchmarks/gpu_check.sh``). See README.md here."""
