"""The generators QDGS searches (the :class:`~qdgs_lib.generators.base.Generator` protocol):
the shapes VAE, toy faces, StyleGAN2/3 in plain torch with readers of NVIDIA's files, and a
wrapper for your own network."""
