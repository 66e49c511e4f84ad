"""Guidance and control of a trained model (chapter 11). Empty until then."""
