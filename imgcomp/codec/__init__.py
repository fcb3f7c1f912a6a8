"""The codec itself: `ImageCodec` (`image_codec`) owns the whole path of an image,
`forward` for training and evaluation, and `symbols` / `reconstruct` / `bits` / `compress` /
`decompress` for coding one image to a file and back.

May import: imgcomp.base, imgcomp.config, imgcomp.nets, imgcomp.entropy_coding.
"""
