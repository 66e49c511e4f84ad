"""Latent-variable models.

    vae.py   a convolutional VAE (the first stage of DiffuseVAE, chapter 02)
"""
