"""Training data: loaders of random crops from image folders, globs and TFRecords, with the
original's epoch semantics (`loaders`), and the TFRecord writer, the original's `mk_img_rec`
(`records`, `imgcomp records`), and what both read of TFRecord files without torch
(`tfrecord_files`). Test data: the test sets (Kodak, BSDS500) downloaded and
checked (`test_sets`, `imgcomp data`).

May import: imgcomp.base.
"""
