"""The SCALE model: config, encoders, Joint Co-Transformer, the score matrix S, heads and losses.

config -> encoders -> jct -> score_matrix (S, S') -> heads / contrastive -> scale (the nn.Module).
Around it: checkpoint (save / load), inference (forward passes over products),
catalog (stored outputs of a set of products).
"""
