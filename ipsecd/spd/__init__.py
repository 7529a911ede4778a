"""The SPD language: parse -> model -> validate -> compile per node (pure code)."""
