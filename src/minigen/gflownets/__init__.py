"""Generative flow networks (chapter 15). Empty until then."""
