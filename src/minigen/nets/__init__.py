"""Networks, all called as ``model(x, t, cond=None)`` with t in [0, 1] of shape (B,).
No paradigm is imported here.

    mlp.py          the 2D toys' MLP (time and condition concatenated to the input)
    embeddings.py   sinusoidal time embedding and label embedding
    unet.py         a small U-Net for 8x8 to 28x28 images
    transformer.py  a patch transformer with DiT's adaLN blocks
    two_time.py     networks of two times, model(x, t, r=None): an MLP and a U-Net (flow maps)
    token_transformer.py  a causal or bidirectional transformer over tokens with a KV cache
                    (autoregressive models and discrete denoisers: model(tokens, t=None))
"""
