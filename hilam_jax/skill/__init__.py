"""Stage 1-2: the skill model (H-Net dynamic chunking over latent actions)."""
