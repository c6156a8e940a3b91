"""The three model families: text Transformer classifier, attention CNN, Vision Transformer."""
