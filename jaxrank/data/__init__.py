"""Data: the synthetic benchmark world, its tokenizer and galleries for looking at it."""
