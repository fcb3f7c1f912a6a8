"""The original TensorFlow release's formats, read without TensorFlow: TF1 tensor
bundles (`tf_bundle`), and the original's log dirs: configs from their names, their variables
mapped onto our model (`tf_log_dirs`). Read-only: writing our own log dirs is imgcomp.checkpoints'.

May import: imgcomp.base, imgcomp.config, imgcomp.nets, imgcomp.codec.
"""
