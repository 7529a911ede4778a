"""Coverage-guided fuzz targets (atheris / libFuzzer); see docs/operations.md "Fuzzing".

Each ``fuzz_*.py`` here is a script: ``python tests/fuzz/fuzz_codec.py [libFuzzer
options] [CORPUS_DIR ...]``.  ``make fuzz`` runs them all for ``FUZZ_SECONDS`` each, and
tests/unit/test_fuzz_smoke.py runs each for a few thousand iterations with fixed seeds.
"""
