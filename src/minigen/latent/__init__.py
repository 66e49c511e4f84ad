"""Latent-variable models and the latent space other models run in (chapters 02 and 08).

    vae.py           a convolutional VAE (the first stage of DiffuseVAE, chapter 02)
    autoencoder.py   a convolutional autoencoder with a spatial latent, spatially weighted loss
    standardize.py   per-channel latent standardisation (the "scale factor") and mis-scaling
"""
