"""Data, all offline, all sampled through an explicit ``torch.Generator``.

    toy2d.py    8gaussians, moons, checkerboard, spirals, rings, ... (``sample_2d``)
    images.py   sklearn's 8x8 digits, MNIST-5k, grey levels <-> [-1, 1], dequantisation
"""
