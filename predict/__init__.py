"""Output-length prediction from prompts (scikit-learn)."""
