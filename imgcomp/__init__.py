"""imgcomp: PyTorch port of Mentzer et al., CVPR 2018 (Conditional Probability Models for Deep Image Compression)."""
