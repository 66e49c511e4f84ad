"""Normalizing flows: invertible maps with an exact likelihood (chapter 07). Empty until then."""
