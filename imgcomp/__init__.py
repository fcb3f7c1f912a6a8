"""imgcomp: a PyTorch port of Mentzer et al., "Conditional Probability Models for Deep Image
Compression" (CVPR 2018)."""
