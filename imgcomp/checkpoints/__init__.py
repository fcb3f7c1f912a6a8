"""Our log dirs and the models in them: the log-dir layout, configs and checkpoints
saved, pruned and loaded, original log dirs included (`log_dirs`), the registry of known models
by name, job id and fingerprint (`zoo`), log dirs made small enough to commit (`ship`), and an
original log dir written as one of ours (`from_original`, `imgcomp convert`).

May import: imgcomp.base, imgcomp.config, imgcomp.nets, imgcomp.entropy_coding, imgcomp.codec,
imgcomp.original.
"""
