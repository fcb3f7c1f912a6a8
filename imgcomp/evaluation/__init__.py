"""Measuring: MS-SSIM as the original defines it and PSNR (`quality`), per-image
measures, the results layout (`"<job_id> <dataset>"` folders, measures.csv, real_bpp.csv), means
and BD-rates (`results`), val.py (`validation`; its flags, importable without torch, in
`validation_flags`), the classical codecs of other_codecs.py (`baselines`), plotter.py
(`plotting`) and its rate-distortion figure (`rd_figure`), the side-by-side crop figure
(`crop_figure`) and `imgcomp report`'s HTML page (`report`, `report_page`); and the
encoder-side searches these measures guide: encode-time refinement of one image's latent for
the model's own objective (`refinement`), and rate control, the setting whose file meets a
budget or a quality floor (`rate_control`).

May import: imgcomp.base, imgcomp.config, imgcomp.nets, imgcomp.entropy_coding, imgcomp.codec,
imgcomp.original, imgcomp.checkpoints, imgcomp.data.
"""
