"""Discrete and autoregressive models (chapter 14). Empty until then."""
