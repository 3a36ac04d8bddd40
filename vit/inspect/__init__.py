"""What a trained ViT learned: the paper's §4.5 figures, as numbers and as PNGs.

  attention.py   mean attention distance per head and depth (Figure 7, right) and attention
                 rollout from the output token to the input (Figures 6 and 14)
  embeddings.py  cosine similarity of position embeddings (Figure 7, centre) and the principal
                 components of the patch-embedding filters (Figure 7, left)
  figures.py     the PNGs (matplotlib, Agg backend)
  __main__.py    `python -m vit.inspect --init SPEC --out DIR [--images FILE.npy|DIR]`

The analysis functions take plain arrays, so they work on any parameters in memory; attention
weights come from the model itself (sown into 'intermediates'), never a second implementation.
"""
