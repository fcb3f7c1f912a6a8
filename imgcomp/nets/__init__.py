"""The networks, as float PyTorch modules: the autoencoder (encoder, importance map,
decoder: `autoencoder`), the learned centres (`quantizer`), the 3D masked context model or
"probability classifier" (`probclass`, whose `ProbClassifier.layers` describes each layer once
for the float forward and the integer coder), the weight initializations (`weight_init`), and
the shapes they fix, importable without torch (`shapes`).
They read configs as plain attribute bags and know nothing of files, coding or training.

May import: imgcomp.base, imgcomp.config.
"""
