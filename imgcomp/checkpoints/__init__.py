"""Our log dirs and the models in them: the log-dir layout, configs and checkpoints
saved, pruned and loaded, original log dirs included (`log_dirs`), the registry of known models
by name, job id and fingerprint (`zoo`; the fingerprints of log dirs, computed once and kept in
the user's cache dir: `fingerprints`), log dirs made small enough to commit (`ship`), an
original log dir written as one of ours (`from_original`, `imgcomp convert`), and the authors'
released models downloaded into the user's models folder (`download`, `imgcomp models
--download authors`).

May import: imgcomp.base, imgcomp.config, imgcomp.nets, imgcomp.entropy_coding, imgcomp.codec,
imgcomp.original.
"""
